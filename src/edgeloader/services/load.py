"""Load: small part (API) + big part (CDN or cache) → plaintext stream.

The plaintext length is known before the first byte is sent: the last two
ciphertext blocks, read up front with a ranged request, reveal the padding.
Then the small part and the big part's chunks run through one streaming
decryptor, and plaintext leaves as it is produced; memory stays at one chunk.
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
from edgeloader.services.session import DeviceSession
from edgeloader.upstream.cdn import CdnObject

log = logging.getLogger(__name__)

TAIL = crypto.V1_TAIL


@dataclass
class PlaintextStream:
    """A resource being loaded. ``chunks`` must be consumed or closed
    (``aclose``); closing early releases every upstream connection."""

    length: int
    chunks: AsyncGenerator[bytes, None]
    source: str  # "cdn" or "cache", for logs and audit


async def open_resource(
    session: DeviceSession, cache: ModelCache | None, folder: str, name: str
) -> PlaintextStream:
    chunk_size = session.settings.chunk_size
    cached = cache.lookup(folder, name) if cache else None
    if cached is not None:
        small = await session.fetch_small(folder, crypto.small_name(name))
        if ModelCache.matches(cached, small):
            try:
                return await _from_file(small, cached, chunk_size)
            except OSError:
                log.warning("cache entry %s unreadable; using the CDN", cached, exc_info=True)
        ModelCache.discard(cached)
        return await _from_cdn(session, cache, folder, name, small)
    return await _from_cdn(session, cache, folder, name, None)


async def _from_cdn(
    session: DeviceSession,
    cache: ModelCache | None,
    folder: str,
    name: str,
    small: bytes | None,
) -> PlaintextStream:
    """Fetches the small part, the big part's tail and the big part's body
    concurrently, then decrypts as the body arrives."""
    key = crypto.big_name(name)

    async def open_body() -> CdnObject:
        return await (await session.cdn()).get(folder, key)

    async def tail() -> tuple[int, bytes]:
        return await (await session.cdn()).tail(folder, key, TAIL)

    body_task: asyncio.Task[CdnObject] | None = None
    try:
        async with asyncio.TaskGroup() as group:
            body_task = group.create_task(open_body())
            tail_task = group.create_task(tail())
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
    try:
        size, big_tail = tail_task.result()
        length = crypto.split_plaintext_length(small, size, big_tail)
    except BaseException:
        body.close()
        raise
    writer = cache.writer(folder, name, small) if cache else None
    chunks = body.chunks(session.settings.chunk_size)
    return PlaintextStream(length, _decrypt(small, chunks, length, body.close, writer), "cdn")


def _first_error(exc: BaseException) -> BaseException:
    """TaskGroup wraps failures in a group; surface one of ours if any."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [_first_error(e) for e in exc.exceptions]
    ours = [e for e in leaves if isinstance(e, EdgeloaderError)]
    return (ours or leaves)[0]


async def _from_file(small: bytes, path: Path, chunk_size: int) -> PlaintextStream:
    handle = await asyncio.to_thread(path.open, "rb")

    def read_tail() -> tuple[int, bytes]:
        """The size and last two blocks, leaving the handle at the start."""
        size = handle.seek(0, 2)
        handle.seek(max(0, size - TAIL))
        tail = handle.read()
        handle.seek(0)
        return size, tail

    try:
        size, big_tail = await asyncio.to_thread(read_tail)
        length = crypto.split_plaintext_length(small, size, big_tail)
    except BaseException:
        handle.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        while data := await asyncio.to_thread(handle.read, chunk_size):
            yield data

    return PlaintextStream(length, _decrypt(small, chunks(), length, handle.close, None), "cache")


async def _decrypt(
    small: bytes,
    big: AsyncIterator[bytes],
    length: int,
    close: Callable[[], None],
    writer: CacheWriter | None,
) -> AsyncGenerator[bytes, None]:
    """Decrypts ``small ‖ big`` as one v1 stream; tees ``big`` to the cache."""

    async def ciphertext() -> AsyncIterator[bytes]:
        yield small
        async for chunk in big:
            if writer is not None:
                await writer.write(chunk)
            yield chunk

    sent = 0
    committed = False
    try:
        async for plain in crypto.decrypt_stream(crypto.resource_key(), ciphertext()):
            sent += len(plain)
            if sent > length:
                raise DecryptionError()
            yield plain
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
        close()
