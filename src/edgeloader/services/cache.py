"""The local model cache: big parts as ciphertext, never plaintext.

Layout: ``{root}/{folder}/{name}/{tag}.big``, where ``tag`` is a hash of
the resource's small part. A re-published resource has a new random IV and
so a new small part, which makes a stale cache entry miss instead of
yielding wrong plaintext. Entries are written to a temporary name and
renamed only after a complete, successful read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path

from edgeloader.storage.files import AtomicFile

log = logging.getLogger(__name__)

_SUFFIX = ".big"


def cache_tag(small_ciphertext: bytes) -> str:
    return hashlib.sha256(small_ciphertext).hexdigest()[:32]


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, folder: str, name: str) -> Path:
        return self.root / folder / name

    def lookup(self, folder: str, name: str) -> Path | None:
        """The cached big part of a resource, whatever its tag, if any."""
        try:
            entries = sorted(self._dir(folder, name).glob(f"*{_SUFFIX}"))
        except OSError:
            return None
        return entries[0] if entries else None

    @staticmethod
    def matches(path: Path, small_ciphertext: bytes) -> bool:
        return path.name == cache_tag(small_ciphertext) + _SUFFIX

    def writer(self, folder: str, name: str, small_ciphertext: bytes) -> CacheWriter:
        final = self._dir(folder, name) / (cache_tag(small_ciphertext) + _SUFFIX)
        return CacheWriter(final)

    @staticmethod
    def discard(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("dropped stale cache entry %s", path)


class CacheWriter:
    """Writes one entry under a temporary name; ``commit`` makes it visible."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self._file: AtomicFile | None = None

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._file = AtomicFile(self.final)
        self._file.write(data)

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)

    def _commit(self) -> None:
        if self._file is None:
            self._write(b"")
        assert self._file is not None
        self._file.commit()
        for other in self.final.parent.glob(f"*{_SUFFIX}"):
            if other != self.final:
                ModelCache.discard(other)

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def abort(self) -> None:
        """Removes the temporary file; the previous entry, if any, stays."""
        if self._file is not None:
            self._file.abort()
