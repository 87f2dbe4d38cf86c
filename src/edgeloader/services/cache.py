"""The local model cache: big parts as ciphertext, never plaintext.

Layout: ``{root}/{folder}/{name}/{tag}-{sha256}.big``. ``tag`` is a hash of
the resource's small part: a re-published resource has a new random IV or
salt and so a new small part, which makes a stale entry miss instead of
yielding wrong plaintext. The name carries what the entry is checked
against as it streams, so that entry and check can never disagree after a
crash, and a damaged file (a flipped byte, a truncation) is caught even in
format v1, which has no MAC:

- without a trusted publisher, ``sha256`` is the digest of the entry's own
  bytes;
- under a signed release, the name is ``{tag}-r{sha256}.big`` with the
  artifact's identity (the manifest's ``sha256``), and every read verifies
  the entry segment by segment against the release's segment list: the
  box's disk is not trusted.

Entries are written under a temporary name and renamed only after a
complete, successful read. The cache never follows a symbolic link: a
folder or entry that is one is treated as absent and never written
through. Anything in the cache that is not a well-formed entry (a
directory, a stray ``.partial`` left by a killed process) is removed.

The one exception is pre-staging's ``{tag}.prefetch`` (:class:`PartialEntry`):
a big part being downloaded in the background, kept across restarts so
that the download resumes (``services/prefetch.py`` keeps its journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeloader import crypto
from edgeloader.errors import DecryptionError
from edgeloader.storage.files import AtomicFile, fsync_dir
from edgeloader.storage.state_dir import ensure_private_dir

log = logging.getLogger(__name__)

_SUFFIX = ".big"
_PREFETCH = ".prefetch"
_ENTRY = re.compile(r"^(?P<tag>[0-9a-f]{32})-(?P<release>r)?(?P<sha256>[0-9a-f]{64})\.big$")


def cache_tag(small_ciphertext: bytes) -> str:
    return hashlib.sha256(small_ciphertext).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    tag: str
    sha256: str
    #: Named by a release's identity (checked by segments), not by its own hash.
    release: bool = False

    def matches(self, small_ciphertext: bytes, identity: str | None) -> bool:
        """Whether the entry holds this small part's big part, of the
        release ``identity`` (None: no release is trusted)."""
        if self.tag != cache_tag(small_ciphertext):
            return False
        if identity is None:
            return not self.release
        return self.release and self.sha256 == identity


def entry_name(tag: str, sha256: str, release: bool) -> str:
    return f"{tag}-{'r' if release else ''}{sha256}{_SUFFIX}"


class EntryCheck:
    """The SHA-256 of a cache entry as it streams, against its name."""

    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry
        self._hash = crypto.Sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def verify(self) -> None:
        if self._hash.hexdigest() != self.entry.sha256:
            ModelCache.discard(self.entry.path)
            # The same single message as any decryption failure.
            raise DecryptionError()


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# A writer hands its bytes to a worker thread in batches of this size: one
# thread hand-off per batch instead of per piece (docs/performance.md, "CPU
# per GB"), and at most this much held per load on its way to the disk.
WRITE_BATCH = 512 * 1024


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Entries being written: one writer each, so that concurrent loads
        # of one resource write it once (the others only stream).
        self._writing: set[Path] = set()
        self._writing_lock = threading.Lock()

    def _dir(self, folder: str, name: str) -> Path | None:
        """The entry folder, or None when any part of it is not a real folder."""
        parts = (self.root / folder, self.root / folder / name)
        if not all(_is_real_dir(p) for p in parts):
            return None
        return parts[1]

    def lookup(self, folder: str, name: str) -> CacheEntry | None:
        """The cached big part of a resource, whatever its tag, if any.

        Entries that are not regular files, or whose names are not
        well-formed, are removed on the way."""
        directory = self._dir(folder, name)
        if directory is None:
            return None
        found = []
        with contextlib.suppress(OSError), os.scandir(directory) as items:
            for item in items:
                match = _ENTRY.match(item.name)
                if match and item.is_file(follow_symlinks=False):
                    entry = CacheEntry(
                        Path(item.path), match["tag"], match["sha256"], bool(match["release"])
                    )
                    found.append(entry)
                elif item.name.endswith(_SUFFIX) or item.is_dir(follow_symlinks=False):
                    self.discard(Path(item.path))
        return min(found, key=lambda e: e.path.name) if found else None

    def _writable_dir(self, folder: str, name: str) -> Path | None:
        directory = self.root / folder / name
        try:
            # Each level 0700, the root too (mkdir's parents= would make them 0755).
            ensure_private_dir(self.root)
            for level in (self.root / folder, directory):
                level.mkdir(exist_ok=True, mode=0o700)
        except OSError:
            log.warning("cache folder %s cannot be created; not caching", directory)
            return None
        if self._dir(folder, name) is None:
            log.warning("cache folder %s is not a plain folder; not caching", directory)
            return None
        return directory

    def writer(
        self, folder: str, name: str, small_ciphertext: bytes, identity: str | None = None
    ) -> CacheWriter | None:
        """A writer for a new entry (of the release ``identity``, if any);
        None when the folder is not safe to write, or when another load is
        writing this entry already."""
        directory = self._writable_dir(folder, name)
        if directory is None:
            return None
        tag = cache_tag(small_ciphertext)
        key = directory / tag
        with self._writing_lock:
            if key in self._writing:
                return None
            self._writing.add(key)
        return CacheWriter(directory, tag, identity, done=lambda: self._done_writing(key))

    def _done_writing(self, key: Path) -> None:
        with self._writing_lock:
            self._writing.discard(key)

    def partial(self, folder: str, name: str, tag: str) -> PartialEntry | None:
        """The pre-staged big part of the resource whose small part has
        ``tag``; None when the folder is not safe to write. Partial files
        of other tags (an older publication) are removed."""
        directory = self._writable_dir(folder, name)
        if directory is None:
            return None
        entry = PartialEntry(directory, tag)
        stale: list[Path] = []
        with contextlib.suppress(OSError), os.scandir(directory) as items:
            stale = [Path(i.path) for i in items if i.name.endswith(_PREFETCH)]
        for path in stale:
            if path != entry.path:
                self.discard(path)
        return entry

    @staticmethod
    def discard(path: Path) -> None:
        """Removes an entry, or whatever stands in its place, without
        following a symbolic link."""
        try:
            if _is_real_dir(path):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError:
            log.warning("could not remove cache entry %s", path, exc_info=True)
            return
        log.info("dropped cache entry %s", path)

    def remove_partials(self) -> int:
        """Deletes ``.partial`` files left by a process killed mid-load."""
        removed = 0
        for top, dirs, files in os.walk(self.root, followlinks=False):
            for file in files:
                if file.endswith(".partial"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(top, file))
                        removed += 1
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
        if removed:
            log.info("removed %d partial cache files left by an interrupted load", removed)
        return removed


class CacheWriter:
    """Writes one entry under a temporary name; ``commit`` makes it visible
    under its final name: the release's identity, or else its own digest
    (the one case where the writer hashes what it writes)."""

    def __init__(
        self,
        directory: Path,
        tag: str,
        identity: str | None = None,
        *,
        done: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.tag = tag
        self.identity = identity
        self._file = AtomicFile(directory / f"{tag}{_SUFFIX}")
        self._hash = crypto.Sha256() if identity is None else None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._done = done

    def _write(self, pieces: list[bytes]) -> None:
        self._file.write_pieces(pieces)
        if self._hash is not None:
            for piece in pieces:
                self._hash.update(piece)

    async def write(self, data: bytes) -> None:
        """Queues ``data``; writes (in a worker thread) once a batch is full."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        if pieces:
            await asyncio.to_thread(self._write, pieces)

    def _commit(self) -> None:
        if self._hash is not None:
            final = self.directory / entry_name(self.tag, self._hash.hexdigest(), False)
        else:
            assert self.identity is not None
            final = self.directory / entry_name(self.tag, self.identity, True)
        self._file.target = final
        self._file.commit()
        with os.scandir(self.directory) as items:
            others = [Path(i.path) for i in items if i.name.endswith(_SUFFIX)]
        for other in others:
            if other != final:
                ModelCache.discard(other)

    async def commit(self) -> None:
        try:
            await self._flush()
            await asyncio.to_thread(self._commit)
        finally:
            self._release()

    def abort(self) -> None:
        """Removes the temporary file; the previous entry, if any, stays."""
        self._pending.clear()
        self._file.abort()
        self._release()

    def _release(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done()


class PartialEntry:
    """A big part written in the background across restarts:
    ``{tag}.prefetch`` in the entry's folder. The caller keeps, durably,
    how many of its bytes are good (:meth:`sync` first); :meth:`open`
    drops anything after that, and :meth:`commit` turns the file into the
    entry ``{tag}-{sha256}.big``."""

    def __init__(self, directory: Path, tag: str) -> None:
        self.directory = directory
        self.tag = tag
        self.path = directory / f"{tag}{_PREFETCH}"
        self.size = 0
        self._fd: int | None = None
        self._lock = threading.Lock()

    def open(self, keep: int) -> int:
        """Opens (or creates) the file and cuts it to at most ``keep``
        bytes, the part known to be good; returns its size."""
        with self._lock:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path, flags, 0o600)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{self.path} is not a regular file")
                size = min(os.fstat(fd).st_size, keep)
                os.ftruncate(fd, size)
                os.lseek(fd, size, os.SEEK_SET)
                os.fsync(fd)
                fsync_dir(self.directory)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self.size = fd, size
            return size

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path} is not open")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self.size += len(data)

    def sync(self) -> None:
        """Makes every byte written so far durable."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def chunks(self, chunk_size: int, limit: int | None = None) -> Iterator[bytes]:
        """The file's bytes (its first ``limit``), read again from the start
        (blocking)."""
        left = limit
        with self.path.open("rb") as handle:
            while left is None or left > 0:
                data = handle.read(chunk_size if left is None else min(chunk_size, left))
                if not data:
                    return
                if left is not None:
                    left -= len(data)
                yield data

    def commit(self, sha256: str, release: bool = False) -> CacheEntry:
        """The file becomes the entry named by ``sha256``: its bytes' own
        digest, or with ``release`` the release's identity. Other entries of
        the resource are dropped."""
        self.sync()
        self.close()
        final = self.directory / entry_name(self.tag, sha256, release)
        os.replace(self.path, final)
        fsync_dir(self.directory)
        with os.scandir(self.directory) as items:
            others = [Path(i.path) for i in items if i.name.endswith(_SUFFIX)]
        for other in others:
            if other != final:
                ModelCache.discard(other)
        return CacheEntry(final, self.tag, sha256, release)

    def discard(self) -> None:
        self.close()
        ModelCache.discard(self.path)
