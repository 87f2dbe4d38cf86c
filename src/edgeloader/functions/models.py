"""The models runs mount: decrypted once, held in memory, shared read-only
(docs/functions.md, "Models").

The store is a tmpfs the loader mounts (0700, ``EDGELOADER_MODEL_MEMORY_MAX``
in size), so no plaintext reaches the box's disk. An entry is one model's
plaintext, keyed by the identity of its ciphertext (``LoadService.identity``:
the signed manifest's ``sha256``, or the digest of the small part the
Resource API serves this box). Its bytes come through the same path as
``POST /load`` (the device session, the cache and pre-staging, the CDN, the
manifest and segment checks), and are written to ``ID.partial`` as they are
verified; only a complete, verified model is renamed into place and
mounted, read-only, at ``/models/FOLDER/NAME``.

- **Decrypted once.** Runs that need the same identity at once wait for
  the one filling it; a new release is a new identity, a new entry, while
  runs already started keep what they mounted.
- **A budget.** Before filling, room is made by evicting, least recently
  used first, entries no run holds; a model that still does not fit fails
  the run before its container starts.
- **Failures** are the run's: ``model F/N: not found``, ``model F/N:
  integrity: <reason>``, ``model F/N: does not fit the model memory budget
  (X MiB needed, Y MiB free)``; nothing partial is ever mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeloader.errors import DecryptionError, EdgeloaderError, IntegrityError, NotFound
from edgeloader.functions.spec import ModelBinding
from edgeloader.metrics import Metrics
from edgeloader.storage.mounts import mount_tmpfs, mounted_under, unmount
from edgeloader.storage.state_dir import ensure_private_dir

__all__ = ["ModelFailed", "ModelSource", "ModelStore", "Mounted"]

log = logging.getLogger(__name__)

MiB = 1 << 20


class ModelFailed(EdgeloaderError):
    """A model a run needs cannot be mounted; the run fails with it."""

    status = 502

    def __init__(self, binding: ModelBinding, reason: str, outcome: str) -> None:
        super().__init__(f"model {binding}: {reason}")
        self.outcome = outcome


class ModelStream(Protocol):
    """A model's plaintext as it is verified (``services.load.PlaintextStream``)."""

    length: int
    identity: str
    chunks: AsyncGenerator[bytes, None]


class ModelSource(Protocol):
    """Where the bytes come from: ``services.load.LoadService``."""

    async def identity(self, folder: str, name: str) -> str: ...

    async def open(self, folder: str, name: str) -> ModelStream: ...


@dataclass
class _Entry:
    identity: str
    path: Path
    size: int
    ready: bool = False
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Mounted:
    """A model a run holds: bind ``path`` read-only at ``binding.target``."""

    binding: ModelBinding
    identity: str
    path: Path


class ModelStore:
    def __init__(
        self, root: Path, budget: int, source: ModelSource, metrics: Metrics | None = None
    ) -> None:
        self.root = root
        self.budget = budget
        self.source = source
        self.metrics = metrics
        self._entries: dict[str, _Entry] = {}
        self._filling: dict[str, asyncio.Lock] = {}
        self.fills = 0  # models decrypted into the store, for tests and doctor

    # The store's life

    def open(self) -> None:
        """Mounts the store's tmpfs, empty (blocking)."""
        ensure_private_dir(self.root)
        for point in mounted_under(self.root):
            unmount(point)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(mode=0o700)
        # A page of slack per possible entry: tmpfs counts whole pages.
        mount_tmpfs(self.root, self.budget + 64 * 4096, mode=0o700)

    def close(self) -> None:
        for point in mounted_under(self.root):
            unmount(point)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def used(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    # Runs

    @contextlib.asynccontextmanager
    async def mounted(self, bindings: Sequence[ModelBinding]) -> AsyncIterator[list[Mounted]]:
        """Every model of ``bindings``, verified and held for the block;
        :class:`ModelFailed` (nothing held) if one cannot be."""
        held: list[_Entry] = []
        try:
            mounts = []
            for binding in bindings:
                entry = await self._acquire(binding)
                held.append(entry)
                mounts.append(Mounted(binding, entry.identity, entry.path))
            yield mounts
        finally:
            for entry in held:
                entry.pins -= 1
                entry.last_used = time.monotonic()

    @contextlib.asynccontextmanager
    async def held(self, mounts: Sequence[Mounted]) -> AsyncIterator[None]:
        """Holds models already mounted for longer (a warm container's life)."""
        entries = [self._entries[m.identity] for m in mounts]
        for entry in entries:
            entry.pins += 1
        try:
            yield
        finally:
            for entry in entries:
                entry.pins -= 1
                entry.last_used = time.monotonic()

    async def _acquire(self, binding: ModelBinding) -> _Entry:
        try:
            entry, outcome = await self._find_or_fill(binding)
        except ModelFailed as failed:
            self._count(failed.outcome)
            raise
        self._count(outcome)
        return entry

    async def _find_or_fill(self, binding: ModelBinding) -> tuple[_Entry, str]:
        try:
            identity = await self.source.identity(binding.folder, binding.name)
        except EdgeloaderError as exc:
            raise _failed(binding, exc) from None
        lock = self._filling.setdefault(identity, asyncio.Lock())
        try:
            async with lock:  # one fill per identity; the others wait for it
                entry = self._entries.get(identity)
                if entry is not None and entry.ready:
                    entry.pins += 1
                    return entry, "cached"
                return await self._fill(binding, identity), "ok"
        finally:
            if not lock.locked():
                self._filling.pop(identity, None)

    async def _fill(self, binding: ModelBinding, identity: str) -> _Entry:
        try:
            stream = await self.source.open(binding.folder, binding.name)
        except EdgeloaderError as exc:
            raise _failed(binding, exc) from None
        chunks = stream.chunks
        try:
            if stream.identity != identity:  # republished in between: the next run sees it
                raise ModelFailed(binding, "changed while it was being mounted", "error")
            self._make_room(binding, stream.length)
            name = hashlib.sha256(identity.encode()).hexdigest()[:32]
            entry = _Entry(identity, self.root / name, stream.length, pins=1)
            self._entries[identity] = entry
            try:
                await self._write(entry, chunks)
            except BaseException as exc:
                self._entries.pop(identity, None)
                if isinstance(exc, EdgeloaderError | OSError):
                    raise _failed(binding, exc) from None
                raise
        finally:
            await chunks.aclose()
        entry.ready = True
        self.fills += 1
        self._gauge()
        log.info("model %s (%d bytes) is in the store", binding, entry.size)
        return entry

    async def _write(self, entry: _Entry, chunks: AsyncIterator[bytes]) -> None:
        """Writes the plaintext as it is verified; each piece's write runs
        in a thread while the next piece is decrypted."""
        partial = entry.path.with_suffix(".partial")
        fd = await asyncio.to_thread(
            os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, chunk))
            if writing is not None:
                await writing
            os.fchmod(fd, 0o444)  # every run's uid reads it; nobody writes it
        except BaseException:
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        os.close(fd)
        os.rename(partial, entry.path)

    def _make_room(self, binding: ModelBinding, need: int) -> None:
        """Evicts idle entries, least recently used first, until ``need``
        bytes fit; :class:`ModelFailed` (``no-room``) if they cannot."""
        idle = sorted(
            (e for e in self._entries.values() if e.ready and e.pins == 0),
            key=lambda e: e.last_used,
        )
        while self.budget - self.used < need and idle:
            self._evict(idle.pop(0))
        free = self.budget - self.used
        if free < need:
            raise ModelFailed(
                binding,
                f"does not fit the model memory budget ({_mib(need)} needed, {_mib(free)} free)",
                "no-room",
            )

    def _evict(self, entry: _Entry) -> None:
        self._entries.pop(entry.identity, None)
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        log.info("evicted a model (%d bytes) no run uses", entry.size)
        self._gauge()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_mounted(outcome)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.model_store_bytes.set(self.used)


def _failed(binding: ModelBinding, exc: BaseException) -> ModelFailed:
    """The run's error for a failure to get ``binding``'s model."""
    if isinstance(exc, ModelFailed):
        return exc
    if isinstance(exc, NotFound):
        return ModelFailed(binding, "not found", "not-found")
    if isinstance(exc, IntegrityError):
        return ModelFailed(binding, exc.detail, "integrity")
    if isinstance(exc, DecryptionError):
        return ModelFailed(binding, f"integrity: {exc.detail}", "integrity")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the tmpfs is full
        return ModelFailed(binding, "does not fit the model memory budget", "no-room")
    if isinstance(exc, EdgeloaderError):
        return ModelFailed(binding, exc.detail, "error")
    return ModelFailed(binding, str(exc), "error")


def _mib(size: int) -> str:
    return f"{-(-size // MiB)} MiB"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
