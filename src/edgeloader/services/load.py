"""Load: small part (API) + big part (CDN or cache) → plaintext stream.

The plaintext length is known before the first byte is sent. For format v2
it follows from the header and the ciphertext's size alone; for v1 the last
two ciphertext blocks, read up front with a ranged request, reveal the
padding. Then the small part and the big part's chunks run through one
streaming decryptor, and plaintext leaves as it is produced. The big part
arrives in order from ``services/download.py`` (parallel ranged reads,
resumed after a drop, pinned to one version of the object), which keeps
memory within the process's budget of CDN bytes.

With a trusted publisher (``services/manifest.py``) the manifest is checked
first, the format and size before any byte, and the ciphertext's SHA-256
as it streams: the last plaintext piece is held back until the hash
matches, and a cache entry is committed only after it did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edgeloader import crypto
from edgeloader.errors import CdnError, DecryptionError
from edgeloader.metrics import Metrics
from edgeloader.services.cache import CacheEntry, CacheWriter, EntryCheck, ModelCache
from edgeloader.services.download import Alignment, Download, Transfers
from edgeloader.services.manifest import Artifact, CiphertextHash, ReleaseGate
from edgeloader.services.session import DeviceSession

log = logging.getLogger(__name__)


@dataclass
class PlaintextStream:
    """A resource being loaded. ``chunks`` must be consumed or closed
    (``aclose``); closing early releases every upstream connection."""

    length: int
    chunks: AsyncGenerator[bytes, None]
    source: str  # "cdn" or "cache", for logs and audit


@dataclass
class _Ciphertext:
    """A resource's ciphertext about to be read: the small part, and the big
    part as a stream that starts with ``big_head`` (bytes already read)."""

    small: bytes
    big_size: int
    big_head: bytes
    big: AsyncIterator[bytes]
    # Idempotent, and never suspends: it runs in the clean-up of a load
    # whose handler may be cancelled.
    close: Callable[[], Awaitable[None]]

    @property
    def size(self) -> int:
        return len(self.small) + self.big_size

    @property
    def start(self) -> bytes:
        return self.small + self.big_head


class LoadService:
    """The loads of one app, over its device session, model cache, release
    gate and CDN transfers (``web/app.py`` makes one)."""

    def __init__(
        self,
        session: DeviceSession,
        cache: ModelCache | None,
        gate: ReleaseGate,
        transfers: Transfers,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.cache = cache
        self.gate = gate
        self.transfers = transfers
        self.metrics = metrics

    async def open(self, folder: str, name: str) -> PlaintextStream:
        """``folder/name``, checked as far as it can be before its first byte."""
        session, cache = self.session, self.cache
        artifact = await self.gate.artifact(
            lambda file_name: session.fetch_small("", file_name), f"{folder}/{name}"
        )
        cached = await asyncio.to_thread(cache.lookup, folder, name) if cache else None
        small: bytes | None = None
        if cached is not None:
            small = await session.fetch_small(folder, crypto.small_name(name))
            if cached.matches(small):
                try:
                    return await self._from_file(small, cached, artifact)
                except (OSError, DecryptionError):
                    # A damaged entry (truncated, emptied, a bad last block) is
                    # caught here, before any byte: drop it and use the CDN.
                    log.warning("cache entry %s is damaged; using the CDN", cached.path)
            await asyncio.to_thread(ModelCache.discard, cached.path)
        return await self._from_cdn(folder, name, small, artifact)

    async def _from_cdn(
        self, folder: str, name: str, small: bytes | None, artifact: Artifact | None
    ) -> PlaintextStream:
        """The small part first, then (v1 only) the big part's last blocks (its
        size and ETag pin the reads that follow), then the big part's body,
        decrypted as it arrives.

        A load never waits for a CDN connection while it holds one: with many
        concurrent loads the connection pool would otherwise fill with bodies
        whose loads all wait for a second connection.
        """
        session, cache = self.session, self.cache
        key = crypto.big_name(name)
        if small is None:
            small = await session.fetch_small(folder, crypto.small_name(name))
        cdn = await session.cdn()
        tail = b""
        size = etag = None
        if crypto.detect_format(small[: crypto.FORMAT_PREFIX]) == 1:
            # The tail gives the size, and the version the body is pinned to.
            found, tail = await cdn.tail(folder, key, crypto.V1_TAIL)
            size, etag = found.total, found.etag or None
        download = Download(
            cdn, self.transfers, folder, key, alignment=Alignment.after(small), size=size, etag=etag
        )

        async def close() -> None:
            download.close()

        try:
            await download.open()
            chunks = download.chunks()
            ct = _Ciphertext(small, download.size or 0, b"", chunks, close)
            # v2 needs the header, which a tiny resource's small part may not hold whole.
            if len(small) < crypto.V2_HEADER_SIZE and ct.big_size:
                ct.big_head = await anext(chunks, b"")
            length = _check(ct, tail, artifact)
            writer = await asyncio.to_thread(cache.writer, folder, name, small) if cache else None
        except BaseException:
            download.close()
            raise
        plain = self._decrypt(ct, length, writer, artifact)
        return PlaintextStream(length, _Closing(plain, ct), "cdn")

    async def _from_file(
        self, small: bytes, entry: CacheEntry, artifact: Artifact | None
    ) -> PlaintextStream:
        chunk_size = self.session.settings.chunk_size
        handle = await asyncio.to_thread(entry.path.open, "rb")

        def read_ends() -> tuple[int, bytes, bytes]:
            """The size, the first and the last bytes, leaving the handle at the start."""
            size = handle.seek(0, 2)
            handle.seek(max(0, size - crypto.V1_TAIL))
            tail = handle.read()
            handle.seek(0)
            return size, handle.read(crypto.V2_HEADER_SIZE), tail

        async def close() -> None:
            handle.close()

        try:
            size, head, tail = await asyncio.to_thread(read_ends)
            handle.seek(0)

            async def chunks() -> AsyncIterator[bytes]:
                while data := await asyncio.to_thread(handle.read, chunk_size):
                    yield data

            ct = _Ciphertext(small, size, b"", chunks(), close)
            length = _check(ct, tail, artifact, head=head)
        except BaseException:
            handle.close()
            raise
        plain = self._decrypt(ct, length, None, artifact, EntryCheck(entry))
        return PlaintextStream(length, _Closing(plain, ct), "cache")

    async def _decrypt(
        self,
        ct: _Ciphertext,
        length: int,
        writer: CacheWriter | None,
        artifact: Artifact | None,
        entry: EntryCheck | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Decrypts ``small ‖ big`` as one stream; tees ``big`` to the cache.

        With a manifest entry (the whole ciphertext's hash) or a cache entry
        (the big part's hash), the last plaintext piece waits for the check.
        """
        digest = CiphertextHash(artifact) if artifact is not None else None
        hold_back = digest is not None or entry is not None

        async def big() -> AsyncIterator[bytes]:
            if ct.big_head:
                yield ct.big_head
            async for chunk in ct.big:
                yield chunk

        async def ciphertext() -> AsyncIterator[bytes]:
            yield ct.small
            if digest is not None:
                digest.update(ct.small)
            async for chunk in big():
                if writer is not None:
                    await writer.write(chunk)
                if digest is not None:
                    digest.update(chunk)
                if entry is not None:
                    entry.update(chunk)
                yield chunk

        sent = 0
        held = b""
        committed = False
        try:
            async for plain in crypto.decrypt_stream(crypto.resource_key(), ciphertext()):
                if sent + len(held) + len(plain) > length:
                    raise DecryptionError()
                if not hold_back:
                    sent += len(plain)
                    yield plain
                    continue
                if held:
                    sent += len(held)
                    yield held
                held = plain
            if entry is not None:
                entry.verify()
            if digest is not None:
                digest.verify()
            if held:
                sent += len(held)
                yield held
            if sent != length:
                raise DecryptionError()
            if writer is not None:
                await writer.commit()
                committed = True
        except CdnError:
            log.warning("CDN failed mid-stream after %d of %d bytes", sent, length)
            raise
        finally:
            if writer is not None and not committed:
                writer.abort()
            await ct.close()
            self.metrics.load_sent("cache" if entry is not None else "cdn", sent)


class _Closing(AsyncGenerator[bytes, None]):
    """A load's plaintext: closing it releases its source even when it was
    never iterated (an async generator that never started skips its
    ``finally``, which would leave the CDN reads running)."""

    def __init__(self, inner: AsyncGenerator[bytes, None], ct: _Ciphertext) -> None:
        self._inner = inner
        self._ct = ct

    async def asend(self, value: None) -> bytes:
        return await self._inner.asend(value)

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None, /) -> bytes:
        if val is None and tb is None:
            return await self._inner.athrow(typ)
        return await self._inner.athrow(typ, val, tb)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._ct.close()


def _check(ct: _Ciphertext, tail: bytes, artifact: Artifact | None, head: bytes = b"") -> int:
    """The manifest's format and size, then the plaintext length: all
    before any byte is sent."""
    start = ct.start + head
    fmt = crypto.detect_format(start[: crypto.FORMAT_PREFIX])
    if artifact is not None:
        artifact.check(fmt=fmt, size=ct.size)
    return crypto.resource_plaintext_length(fmt, start, ct.size, ct.small + tail)
