"""Load: small part (API) + big part (CDN or cache) → plaintext stream.

The plaintext length is known before the first byte is sent: for v2 from
the header and the ciphertext's size, for v1 from the last two ciphertext
blocks (read up front). Then ``small ‖ big`` runs through one streaming
decryptor and plaintext leaves as it is made (docs/architecture.md, "Load").

Under a signed release (``services/manifest.py``) the format, size and
segment list are checked before the first byte, and the ciphertext passes
through the release's gate before the decryptor sees it, so every byte of
plaintext comes from verified segments, whether the ciphertext came from
the CDN or from the cache (whose disk is not trusted either). A mismatch
cuts the stream there: the client holds only verified plaintext.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edgeloader import crypto
from edgeloader.errors import CdnError, DecryptionError, IntegrityError, NotFound, ObjectChanged
from edgeloader.metrics import Metrics
from edgeloader.services.cache import CacheEntry, CacheWriter, EntryCheck, ModelCache, cache_tag
from edgeloader.services.download import READ_SIZE, Alignment, Download, Transfers
from edgeloader.services.manifest import Release, ReleaseGate, Verified
from edgeloader.services.session import DeviceSession
from edgeloader.upstream.cdn import CdnRange

log = logging.getLogger(__name__)


async def small_part(
    fetch: Callable[[str, str], Awaitable[bytes]], folder: str, name: str
) -> bytes:
    """``folder/name``'s small part from the Resource API. A resource it
    does not have is ``model F/N: not found`` (docs/functions.md,
    "Models"), never the name of the part the API was asked for."""
    try:
        return await fetch(folder, crypto.small_name(name))
    except NotFound:
        raise NotFound(f"model {folder}/{name}: not found") from None


@dataclass
class PlaintextStream:
    """A resource being loaded. ``chunks`` must be consumed or closed
    (``aclose``); closing early releases every upstream connection."""

    length: int
    chunks: AsyncGenerator[bytes, None]
    source: str  # "cdn" or "cache", for logs and audit
    #: What this ciphertext is (:meth:`LoadService.identity`).
    identity: str = ""


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

    async def identity(self, folder: str, name: str) -> str:
        """What ``folder/name`` is now, without reading its big part: under a
        signed release the manifest's ``sha256`` of its ciphertext; without
        one, the digest of the small part the Resource API serves this box
        (it changes with every publication). Neither needs the CDN, so a
        pre-staged resource is identified with the CDN down."""
        release = await self.gate.release(self.session.fetch_small, folder, name)
        if release is not None:
            return release.identity
        small = await small_part(self.session.fetch_small, folder, name)
        return _identity(small, None)

    async def open(self, folder: str, name: str) -> PlaintextStream:
        """``folder/name``, checked as far as it can be before its first byte."""
        session, cache = self.session, self.cache
        release = await self.gate.release(session.fetch_small, folder, name)
        identity = release.identity if release is not None else None
        cached = await asyncio.to_thread(cache.lookup, folder, name) if cache else None
        small: bytes | None = None
        if cached is not None:
            small = await small_part(session.fetch_small, folder, name)
            if cached.matches(small, identity):
                try:
                    return await self._from_file(small, cached, release)
                except (OSError, DecryptionError):
                    # A damaged entry (truncated, emptied, a bad last block) is
                    # caught here, before any byte: drop it and use the CDN.
                    log.warning("cache entry %s is damaged; using the CDN", cached.path)
            await asyncio.to_thread(ModelCache.discard, cached.path)
        return await self._from_cdn(folder, name, small, release)

    async def _from_cdn(
        self, folder: str, name: str, small: bytes | None, release: Release | None
    ) -> PlaintextStream:
        """The small part first, then the big part's body, decrypted as it
        arrives; in v1 its last blocks are read at the same time (the
        plaintext length), and must come from the same version of the object.

        The body's reads take their connections under ``Transfers.slots``,
        which leaves room in the pool for the short tail reads: a tail never
        waits for a connection a body holds for long, so many concurrent
        loads cannot fill the pool with bodies whose loads wait for tails.
        """
        session, cache = self.session, self.cache
        key = crypto.big_name(name)
        if small is None:
            small = await small_part(session.fetch_small, folder, name)
        cdn = await session.cdn()
        tail = b""
        tail_read: asyncio.Task[tuple[CdnRange, bytes]] | None = None
        if crypto.detect_format(small[: crypto.FORMAT_PREFIX]) == 1:
            # v1's plaintext length is in its last block: read beside the
            # body's first request, not before it (on a server that reads the
            # whole object for every GET, the two reads then overlap). The
            # tail holds no connection the body waits for, and none it holds
            # waits for the body.
            tail_read = asyncio.create_task(cdn.tail(folder, key, crypto.V1_TAIL))
        if release is not None:
            # Parts start on segment boundaries, and the reader holds one
            # segment while it is verified: reserved with its current part.
            segment = release.artifact.segment
            alignment, hold = Alignment.segments(small, segment), segment
        else:
            alignment, hold = Alignment.after(small), 0
        download = Download(cdn, self.transfers, folder, key, alignment=alignment, hold=hold)
        writer: CacheWriter | None = None

        async def close() -> None:
            download.close()
            if writer is not None:
                writer.abort()  # after a commit, this only lets go of the entry

        try:
            await download.open()
            if tail_read is not None:
                found, tail = await tail_read
                if found.total != download.size or found.etag != (download.etag or ""):
                    raise ObjectChanged(f"{download.what}: the object changed on the CDN")
            chunks = download.chunks()
            ct = _Ciphertext(small, download.size or 0, b"", chunks, close)
            # v2 needs the header, which a tiny resource's small part may not hold whole.
            if len(small) < crypto.V2_HEADER_SIZE and ct.big_size:
                ct.big_head = await anext(chunks, b"")
            length = _check(ct, tail, release)
            if cache is not None:
                identity = release.identity if release is not None else None
                writer = await asyncio.to_thread(cache.writer, folder, name, small, identity)
        except BaseException:
            download.close()
            if tail_read is not None:
                tail_read.cancel()
            raise
        verified = release.gate() if release is not None else None
        plain = self._decrypt(ct, length, writer, verified)
        return PlaintextStream(length, _Closing(plain, ct), "cdn", _identity(small, release))

    async def _from_file(
        self, small: bytes, entry: CacheEntry, release: Release | None
    ) -> PlaintextStream:
        # Pieces of the CDN's size: each waits, as plaintext, in a slow
        # client's socket buffer, outside the budget.
        chunk_size = READ_SIZE
        handle = await asyncio.to_thread(entry.path.open, "rb")

        def read_ends() -> tuple[int, bytes, bytes]:
            """The size, the first and the last bytes, leaving the handle at the start."""
            size = handle.seek(0, 2)
            handle.seek(max(0, size - crypto.V1_TAIL))
            tail = handle.read()
            handle.seek(0)
            return size, handle.read(crypto.V2_HEADER_SIZE), tail

        # What a load from the cache holds at once comes from the same budget
        # as CDN reads: a piece being read, its plaintext held back, one in
        # the client's socket buffer and one on its way there (four pieces),
        # and a segment being verified. Under a release the pieces that reach
        # the decryptor are whole segments. Many concurrent loads from the
        # cache wait for room instead of each holding its own megabytes.
        hold = release.artifact.segment if release is not None else 0
        claim = self.transfers.budget.claim(4 * max(chunk_size, hold) + hold, urgent=True)

        async def close() -> None:
            claim.close()
            handle.close()

        try:
            size, head, tail = await asyncio.to_thread(read_ends)
            handle.seek(0)

            async def chunks() -> AsyncIterator[bytes]:
                await claim.wait()
                while data := await asyncio.to_thread(handle.read, chunk_size):
                    yield data

            ct = _Ciphertext(small, size, b"", chunks(), close)
            length = _check(ct, tail, release, head=head)
        except BaseException:
            claim.close()
            handle.close()
            raise
        # Under a release the entry is verified by segments as it streams;
        # without one, by its own digest with the last piece held back.
        if release is not None:
            plain = self._decrypt(ct, length, None, release.gate(), cached=entry)
        else:
            plain = self._decrypt(ct, length, None, None, cached=entry, check=EntryCheck(entry))
        return PlaintextStream(length, _Closing(plain, ct), "cache", _identity(small, release))

    async def _decrypt(
        self,
        ct: _Ciphertext,
        length: int,
        writer: CacheWriter | None,
        verified: Verified | None,
        *,
        cached: CacheEntry | None = None,
        check: EntryCheck | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Decrypts ``small ‖ big`` as one stream, from verified segments
        only when ``verified`` gates it; tees the big part to the cache.
        ``check`` is an entry's own digest (read without a release)."""

        async def read() -> AsyncIterator[bytes]:
            yield ct.small
            if ct.big_head:
                yield ct.big_head
            async for chunk in ct.big:
                if check is not None:
                    check.update(chunk)
                yield chunk

        async def ciphertext() -> AsyncIterator[bytes | memoryview]:
            released = 0  # ciphertext bytes passed on so far
            async for piece in read():
                out = verified.update(piece) if verified is not None else piece
                if not out:
                    continue
                if writer is not None:
                    big = out[max(0, len(ct.small) - released) :]
                    if big:
                        await writer.write(big)
                released += len(out)
                if verified is None:
                    yield out
                    continue
                # A verified segment goes on in pieces of the CDN's read size:
                # its plaintext then never needs a segment-sized buffer, which
                # glibc would keep on its heap after the first few. 50 signed
                # loads at once peaked 13-32 MB lower (docs/performance.md).
                view = memoryview(out)
                for at in range(0, len(view), READ_SIZE):
                    yield view[at : at + READ_SIZE]
            if verified is not None:
                verified.finish()

        sent = 0
        held = b""
        committed = False
        try:
            # The last piece waits for the end: the entry's digest (``check``),
            # the full length, and the cache's commit, so that a client
            # holding the whole body also finds the entry in place.
            async for plain in crypto.decrypt_stream(crypto.resource_key(), ciphertext()):
                if sent + len(held) + len(plain) > length:
                    raise DecryptionError()
                if held:
                    sent += len(held)
                    yield held
                held = plain
            if check is not None:
                check.verify()
            if sent + len(held) != length:
                raise DecryptionError()
            if writer is not None:
                await writer.commit()
                committed = True
            if held:
                sent += len(held)
                yield held
        except CdnError:
            log.warning("CDN failed mid-stream after %d of %d bytes", sent, length)
            raise
        except IntegrityError:
            if cached is not None:  # the box's own copy is forged or damaged: drop it
                await asyncio.to_thread(ModelCache.discard, cached.path)
            raise
        finally:
            if writer is not None and not committed:
                writer.abort()
            await ct.close()
            self.metrics.load_sent("cache" if cached is not None else "cdn", sent)


def _identity(small: bytes, release: Release | None) -> str:
    return release.identity if release is not None else f"small:{cache_tag(small)}"


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


def _check(ct: _Ciphertext, tail: bytes, release: Release | None, head: bytes = b"") -> int:
    """The release's format and size, then the plaintext length: all before
    any byte is sent."""
    start = ct.start + head
    fmt = crypto.detect_format(start[: crypto.FORMAT_PREFIX])
    if release is not None:
        release.check(fmt=fmt, size=ct.size)
    return crypto.resource_plaintext_length(fmt, start, ct.size, ct.small + tail)
