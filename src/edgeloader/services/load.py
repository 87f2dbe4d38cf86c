"""Load: small part (API) + big part (CDN or cache) → plaintext stream.

The plaintext length is known before the first byte is sent. For format v2
it follows from the header and the ciphertext's size alone; for v1 the last
two ciphertext blocks, read up front with a ranged request, reveal the
padding. Then the small part and the big part's chunks run through one
streaming decryptor, and plaintext leaves as it is produced; memory stays
at one chunk.

With a trusted publisher (``services/manifest.py``) the manifest is checked
first, the format and size before any byte, and the ciphertext's SHA-256
as it streams: the last plaintext piece is held back until the hash
matches, and a cache entry is committed only after it did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from edgeloader import crypto
from edgeloader.errors import CdnError, DecryptionError, EdgeloaderError
from edgeloader.services.cache import CacheWriter, ModelCache
from edgeloader.services.manifest import Artifact, CiphertextHash, ReleaseGate
from edgeloader.services.session import DeviceSession
from edgeloader.upstream.cdn import CdnObject

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
    close: Callable[[], None]

    @property
    def size(self) -> int:
        return len(self.small) + self.big_size

    @property
    def start(self) -> bytes:
        return self.small + self.big_head

    @property
    def format(self) -> int:
        return crypto.detect_format(self.start[: crypto.FORMAT_PREFIX])


async def open_resource(
    session: DeviceSession,
    cache: ModelCache | None,
    gate: ReleaseGate,
    folder: str,
    name: str,
) -> PlaintextStream:
    artifact = await gate.artifact(
        lambda file_name: session.fetch_small("", file_name), f"{folder}/{name}"
    )
    cached = cache.lookup(folder, name) if cache else None
    small: bytes | None = None
    if cached is not None:
        small = await session.fetch_small(folder, crypto.small_name(name))
        if ModelCache.matches(cached, small):
            try:
                return await _from_file(small, cached, artifact, session.settings.chunk_size)
            except OSError:
                log.warning("cache entry %s unreadable; using the CDN", cached, exc_info=True)
        ModelCache.discard(cached)
    return await _from_cdn(session, cache, folder, name, small, artifact)


async def _from_cdn(
    session: DeviceSession,
    cache: ModelCache | None,
    folder: str,
    name: str,
    small: bytes | None,
    artifact: Artifact | None,
) -> PlaintextStream:
    """Fetches the small part and opens the big part concurrently, then
    decrypts as the body arrives."""
    key = crypto.big_name(name)
    cdn = await session.cdn()
    body_task: asyncio.Task[CdnObject] | None = None
    try:
        async with asyncio.TaskGroup() as group:
            body_task = group.create_task(cdn.get(folder, key))
            small_task = (
                group.create_task(session.fetch_small(folder, crypto.small_name(name)))
                if small is None
                else None
            )
    except BaseException as exc:
        opened = body_task is not None and body_task.done() and not body_task.cancelled()
        if opened and body_task is not None and body_task.exception() is None:
            body_task.result().close()
        raise _first_error(exc) from None
    body = body_task.result()
    small = small_task.result() if small_task else small
    assert small is not None
    chunks = body.chunks(session.settings.chunk_size)
    ct = _Ciphertext(small, body.size, b"", chunks, body.close)
    try:
        # v2 needs the header, which a tiny resource's small part may not hold whole.
        if len(small) < crypto.V2_HEADER_SIZE and body.size:
            ct.big_head = await anext(chunks, b"")
        tail = b""
        if ct.format == 1:
            tail = (await cdn.tail(folder, key, crypto.V1_TAIL))[1]
        length = _check(ct, tail, artifact)
    except BaseException:
        body.close()
        raise
    writer = cache.writer(folder, name, small) if cache else None
    return PlaintextStream(length, _decrypt(ct, length, writer, artifact), "cdn")


def _first_error(exc: BaseException) -> BaseException:
    """TaskGroup wraps failures in a group; surface one of ours if any."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [_first_error(e) for e in exc.exceptions]
    ours = [e for e in leaves if isinstance(e, EdgeloaderError)]
    return (ours or leaves)[0]


async def _from_file(
    small: bytes, path: Path, artifact: Artifact | None, chunk_size: int
) -> PlaintextStream:
    handle = await asyncio.to_thread(path.open, "rb")

    def read_ends() -> tuple[int, bytes, bytes]:
        """The size, the first and the last bytes, leaving the handle at the start."""
        size = handle.seek(0, 2)
        handle.seek(max(0, size - crypto.V1_TAIL))
        tail = handle.read()
        handle.seek(0)
        return size, handle.read(crypto.V2_HEADER_SIZE), tail

    try:
        size, head, tail = await asyncio.to_thread(read_ends)
        handle.seek(0)

        async def chunks() -> AsyncIterator[bytes]:
            while data := await asyncio.to_thread(handle.read, chunk_size):
                yield data

        ct = _Ciphertext(small, size, b"", chunks(), handle.close)
        length = _check(ct, tail, artifact, head=head)
    except BaseException:
        handle.close()
        raise
    return PlaintextStream(length, _decrypt(ct, length, None, artifact), "cache")


def _check(ct: _Ciphertext, tail: bytes, artifact: Artifact | None, head: bytes = b"") -> int:
    """The manifest's format and size, then the plaintext length: all
    before any byte is sent."""
    start = ct.start + head
    fmt = crypto.detect_format(start[: crypto.FORMAT_PREFIX])
    if artifact is not None:
        artifact.check(fmt=fmt, size=ct.size)
    return crypto.resource_plaintext_length(fmt, start, ct.size, ct.small + tail)


async def _decrypt(
    ct: _Ciphertext,
    length: int,
    writer: CacheWriter | None,
    artifact: Artifact | None,
) -> AsyncGenerator[bytes, None]:
    """Decrypts ``small ‖ big`` as one stream; tees ``big`` to the cache.

    With a manifest entry, the last plaintext piece waits for the hash.
    """
    digest = CiphertextHash(artifact) if artifact is not None else None

    async def ciphertext() -> AsyncIterator[bytes]:
        yield ct.small
        if digest is not None:
            digest.update(ct.small)
        if ct.big_head:
            if writer is not None:
                await writer.write(ct.big_head)
            if digest is not None:
                digest.update(ct.big_head)
            yield ct.big_head
        async for chunk in ct.big:
            if writer is not None:
                await writer.write(chunk)
            if digest is not None:
                digest.update(chunk)
            yield chunk

    sent = 0
    held = b""
    committed = False
    try:
        async for plain in crypto.decrypt_stream(crypto.resource_key(), ciphertext()):
            if sent + len(held) + len(plain) > length:
                raise DecryptionError()
            if digest is None:
                sent += len(plain)
                yield plain
                continue
            if held:
                sent += len(held)
                yield held
            held = plain
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
        ct.close()
