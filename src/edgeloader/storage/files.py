"""Files: chunked reads for the event loop, and the one atomic, durable write.

Every file the project writes whole (the signing key, cache entries, the
publisher's outputs, the reference API's store) goes through
:class:`AtomicFile`: the bytes go to a temporary name beside the target,
are fsynced, renamed over the target, and the folder is fsynced, so after a
crash the target is either the old file or the complete new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

# The most buffers one writev() takes (IOV_MAX on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX")

__all__ = ["AtomicFile", "atomic_write", "fsync_dir", "read_file_chunks"]


async def read_file_chunks(path: Path, chunk_size: int) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, read off the event loop."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, chunk_size):
            yield data
    finally:
        handle.close()


def fsync_dir(path: Path) -> None:
    """Makes a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file that appears at ``target`` complete, or not at all.

    Write with :meth:`write` (blocking; call it from a worker thread in async
    code), then :meth:`commit`; :meth:`abort` (or leaving the ``with`` block
    on an exception) removes the temporary file and keeps any old target.
    With ``exclusive`` the commit refuses to replace an existing target
    (``FileExistsError``), so concurrent creators cannot overwrite each other.

    The methods are serialised by a lock: an async caller may be cancelled
    while its ``write`` still runs in a worker thread, and the descriptor
    must not be closed (and its number reused by a socket) under that write.
    After ``abort`` every further write fails.
    """

    def __init__(self, target: Path, mode: int = 0o600, *, exclusive: bool = False) -> None:
        self.target = target
        self.mode = mode
        self.exclusive = exclusive
        self.temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        self._fd: int | None = None
        self._done = False
        self._lock = threading.Lock()
        self.size = 0

    def _open(self) -> int:
        if self._done:
            raise ValueError(f"{self.target}: the file was already committed or aborted")
        if self._fd is None:
            self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
            # The mode given to open() is cut by the umask; the file's is what we say.
            os.fchmod(self._fd, self.mode)
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self.size += len(data)

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Writes ``pieces`` in order, with as few system calls as it takes
        (``writev``): no joined copy of them is made."""
        with self._lock:
            fd = self._open()
            views = [memoryview(p) for p in pieces if len(p)]
            while views:
                written = os.writev(fd, views[:_IOV_MAX])
                self.size += written
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]

    def commit(self) -> None:
        with self._lock:
            fd = self._open()
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            self._done = True
            try:
                if self.exclusive:
                    os.link(self.temp, self.target)
                    os.unlink(self.temp)
                else:
                    os.replace(self.temp, self.target)
            except BaseException:
                self._remove_temp()
                raise
            fsync_dir(self.target.parent)

    def abort(self) -> None:
        with self._lock:
            self._done = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._remove_temp()

    def _remove_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a commit the temporary name is gone, so this only ever
        # removes an uncommitted file.
        self.abort()


def atomic_write(target: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Writes ``data`` to ``target`` atomically and durably (see :class:`AtomicFile`)."""
    with AtomicFile(target, mode, exclusive=exclusive) as out:
        out.write(data)
        out.commit()
