"""Reading one CDN object as a stream of bytes in order: parallel ranged
reads, resumed where they stopped, pinned to one version of the object.

docs/architecture.md ("Parallel ranged reads", "Drops, stalls and a changed
object") gives the tour and the numbers; the comments below give the why
where the code cannot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgeloader import crypto
from edgeloader.config import DownloadSettings
from edgeloader.errors import CdnError, CdnReadFailed, DecryptionError, NotFound, ObjectChanged
from edgeloader.metrics import Metrics
from edgeloader.services.budget import ByteBudget, Claim, TokenBucket
from edgeloader.services.width import Sample, WidthRule
from edgeloader.upstream.cdn import MAX_POOL, Cdn, CdnRange

__all__ = ["Alignment", "Download", "Transfers"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 8.0
# The most one read of a body returns. Each piece goes on, decrypted, to a
# client that may be slow, where it waits as plaintext and as a copy in the
# socket's buffer: outside the budget, so not large. But every piece costs
# the same Python work on its way (about ten steps from the CDN's socket to
# the client's), so not small either: the event loop receives at most
# 256 KiB at once, and a read of that size takes what has arrived whole.
READ_SIZE = 256 * 1024
# Below the CDN client's pool: the rest is for the short reads (v1 tails).
CONNECTION_SLOTS = MAX_POOL - 4
# Parts past the reader's current one that may be started (finished ones
# wait in memory for the reader): a slow current part does not leave the
# other connections idle. The budget bounds their bytes.
MAX_AHEAD = 6
_jitter = random.Random()  # noqa: S311 - spreads retries out, nothing secret


@dataclass(frozen=True)
class Alignment:
    """Where parts may start, in the object's coordinates: ``offset + k·unit``."""

    unit: int = 1
    offset: int = 0

    @classmethod
    def after(cls, small: bytes) -> Alignment:
        """Boundaries for a big part that follows ``small`` in a resource's
        ciphertext: whole 16-byte blocks in v1, whole chunks in v2."""
        n = len(small)
        if n >= crypto.FORMAT_PREFIX and crypto.detect_format(small[: crypto.FORMAT_PREFIX]) == 2:
            if n < crypto.V2_HEADER_SIZE:
                return cls()  # a tiny resource: one part anyway
            try:
                chunk = crypto.v2_stored_chunk_size(small[: crypto.V2_HEADER_SIZE])
            except DecryptionError:
                return cls()  # a malformed header fails at the decryptor
            return cls(chunk, (crypto.V2_HEADER_SIZE - n) % chunk)
        return cls(crypto.BLOCK_SIZE, -n % crypto.BLOCK_SIZE)

    @classmethod
    def segments(cls, small: bytes, segment: int) -> Alignment:
        """Boundaries of a release's segments (``k·segment`` in the whole
        ciphertext) for the big part that follows ``small``."""
        return cls(segment, -len(small) % segment)

    def up(self, position: int) -> int:
        """The first boundary at or after ``position``."""
        steps = -(-(position - self.offset) // self.unit)
        return self.offset + steps * self.unit

    def round(self, size: int) -> int:
        """``size`` as a whole number of units, at least one."""
        return max(1, round(size / self.unit)) * self.unit


class Transfers:
    """What every CDN read of one app shares: the settings, the budget of
    bytes in memory, the rate cap and the metrics (the app makes one)."""

    def __init__(self, settings: DownloadSettings, chunk_size: int, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.budget = ByteBudget(max(settings.inflight_max, 2 * chunk_size))
        self.rate = TokenBucket(settings.max_rate) if settings.max_rate else None
        # Reads wait for a connection here, not in the client's pool, so
        # that the stall timeout counts only the CDN's silence.
        self.slots = asyncio.Semaphore(CONNECTION_SLOTS)


class _Part:
    def __init__(
        self, start: int, end: int | None, request_end: int | None, *, rest: bool = False
    ) -> None:
        self.start = start
        self.end = end  # exclusive; None until the object's size is known
        self.request_end = request_end  # what the first request asks for (None: to the end)
        # The rest of the object as one stream: started only as the current part.
        self.rest = rest
        self.wait: float | None = None  # seconds from the first request to its first byte
        self.first_at = 0.0
        self.sampled = False  # its first request was reported to the width rule
        self.received = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.held = 0  # bytes received and not yet released by the reader
        self.streamed = False
        self.claim: Claim | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()

    def span(self) -> str:
        end = "end" if self.end is None else str(self.end - 1)
        return f"bytes {self.start}-{end}"


class Download:
    """One object from byte ``start``: ``await open()``, then iterate
    ``chunks()``; always ``close()`` (or ``await aclose()``), which stops
    every request.

    ``size`` and ``etag``, when known (a v1 tail read, a resumed
    pre-staging), pin the read from its first request.
    """

    def __init__(
        self,
        cdn: Cdn,
        transfers: Transfers,
        bucket: str,
        key: str,
        *,
        alignment: Alignment | None = None,
        start: int = 0,
        size: int | None = None,
        etag: str | None = None,
        hold: int = 0,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.start = start
        self.size = size
        self.etag = etag
        self.received = 0  # bytes received over the network, retries included
        self._cdn = cdn
        self._settings = transfers.settings
        self._chunk = transfers.chunk_size
        self._budget = transfers.budget
        self._rate = transfers.rate
        self._slots = transfers.slots
        self._metrics = transfers.metrics
        self._alignment = alignment or Alignment()
        # Bytes the reader itself holds between reading and releasing them
        # (a segment being verified), reserved with its current part.
        self._hold = hold
        self._part_size = self._alignment.round(self._settings.part_size)
        self._parts: list[_Part] = []
        self._current = 0  # the part the reader is on
        self._next = 0  # the first part not started
        self._width = 1
        self._rule: WidthRule | None = None  # made once the size is known
        self._closing = False
        self._fatal: BaseException | None = None
        self._opened: asyncio.Future[None] | None = None

    @property
    def what(self) -> str:
        return f"read of {self.bucket}/{self.key}"

    @property
    def parts(self) -> int:
        return len(self._parts)

    @property
    def width(self) -> int:
        """Parts read at once so far (services/width.py decides)."""
        return self._width

    @property
    def settled(self) -> str:
        """Why the width stopped growing ("" while it may grow)."""
        return self._rule.why if self._rule is not None else ""

    async def open(self) -> None:
        """Starts reading; returns once the object's first answer arrived
        (its size and ETag are then known), or raises its error."""
        if self.size is not None and self.start >= self.size:
            return
        self._opened = asyncio.get_running_loop().create_future()
        # One stream to the end; the width rule splits it when widening pays.
        self._parts.append(_Part(self.start, self.size, self.size))
        if self.size is not None:
            self._make_rule()
        self._fill()
        await asyncio.shield(self._opened)

    def _make_rule(self) -> None:
        assert self.size is not None
        s = self._settings
        small = self.size - self.start < max(s.parallel_min, 2 * self._part_size)
        self._rule = WidthRule(1 if small else s.connections, self._part_size)

    def _fill(self) -> None:
        """Starts parts in order while fewer than ``width`` are in flight,
        at most MAX_AHEAD past the reader's; the one-stream rest only once
        the reader is on it."""
        while not self._closing and self._next < len(self._parts):
            part = self._parts[self._next]
            if part.rest and self._next != self._current:
                return
            if self._next - self._current > MAX_AHEAD:
                return
            running = sum(1 for p in self._parts[self._current : self._next] if not p.done)
            if running >= self._width:
                return
            part.streamed = self._next == self._current
            if part.streamed:
                part.claim = self._budget.claim(2 * self._chunk + self._hold, urgent=True)
            else:
                assert part.end is not None
                part.claim = self._budget.claim(part.end - part.start)
            part.task = asyncio.create_task(self._fetch(part))
            self._next += 1

    def _observe(self, part: _Part, n: int, now: float) -> None:
        """Feeds the width rule with a piece of ``part`` and acts on it."""
        rule = self._rule
        if rule is None:
            return
        settled = rule.settled
        rule.received(n, now)
        if not part.sampled and part.wait is not None:
            ended = part.end is not None and part.start + part.received >= part.end
            if part.received >= self._part_size or ended:
                part.sampled = True
                rule.sample(Sample(part.wait, now - part.first_at), now)
        if rule.settled and not settled:
            log.debug("%s: %d connection(s): %s", self.what, rule.width, rule.why)
        if rule.one_stream:
            self._one_stream()
        if rule.width > self._width:
            self._width = rule.width
            self._split()
            self._fill()

    def _one_stream(self) -> None:
        """The parts not started become one request for the rest."""
        if self._next >= len(self._parts) or self._parts[self._next].rest:
            return
        start = self._parts[self._next].start
        del self._parts[self._next :]
        self._parts.append(_Part(start, self.size, self.size, rest=True))

    def _split(self) -> None:
        """Gives a widened read parts to start: when none is left unstarted,
        the last part (a stream to the end) stops a part ahead of where it
        is, and the rest is planned in parts."""
        if self._next < len(self._parts) or not self._parts:
            return
        last = self._parts[-1]
        assert self.size is not None
        if last.done or last.end != self.size:
            return
        cut = self._alignment.up(last.start + last.received + self._part_size)
        if self.size - cut < self._part_size:
            return
        last.end = cut
        position = cut
        while position < self.size:
            end = position + self._part_size
            if self.size - end < self._part_size // 2:
                end = self.size  # no sliver of a part at the end
            self._parts.append(_Part(position, end, end))
            position = end

    async def chunks(self) -> AsyncIterator[bytes]:
        """The object's bytes in order, from ``start``."""
        while self._current < len(self._parts):
            part = self._parts[self._current]
            if part.claim is None:
                self._fill()
            assert part.claim is not None
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if part.chunks:
                    data = part.chunks.popleft()
                    yield data
                    part.held -= len(data)
                    if not part.streamed:
                        part.claim.release(len(data))
                    part.room.set()
                    continue
                if part.error is not None:
                    raise part.error
                if part.done:
                    break
                part.claim.hurry()
                part.arrived.clear()
                await part.arrived.wait()
            part.claim.close()
            self._current += 1
            self._fill()

    def close(self) -> None:
        """Stops every request and gives back every byte of the budget, at
        once: the requests end in the background as soon as they run again.
        (Nothing here waits, so a caller being cancelled still gets through.)"""
        self._closing = True
        for part in self._parts:
            if part.task is not None:
                part.task.cancel()
            if part.claim is not None:
                part.claim.close()
            part.chunks.clear()
        if self._opened is not None:
            if not self._opened.done():
                self._opened.cancel()
            elif not self._opened.cancelled():
                self._opened.exception()  # raised by open(), or never awaited

    async def aclose(self) -> None:
        """:meth:`close`, then waits until every request has ended."""
        self.close()
        tasks = [p.task for p in self._parts if p.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one part -----------------------------------------------------------------------

    async def _fetch(self, part: _Part) -> None:
        assert part.claim is not None
        try:
            await part.claim.wait()
            await self._read_part(part)
            part.done = True
            self._fill()  # a connection is free
        except asyncio.CancelledError:
            raise
        except ObjectChanged as exc:
            self._fail(exc)
        except Exception as exc:
            part.error = exc
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(exc)
        finally:
            part.arrived.set()

    def _fail(self, exc: BaseException) -> None:
        """A failure of the whole read: every waiting reader sees it."""
        if self._fatal is None:
            log.error("%s stopped: %s", self.what, exc)
            self._metrics.cdn_read_failed("object-changed")
        self._fatal = exc
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(exc)
        for part in self._parts:
            part.arrived.set()

    async def _read_part(self, part: _Part) -> None:
        s = self._settings
        failures = 0
        while part.end is None or part.start + part.received < part.end:
            before = part.received
            try:
                await self._attempt(part)
            except ObjectChanged:
                raise
            except NotFound as exc:
                if self._opened is not None and not self._opened.done():
                    raise
                raise ObjectChanged(f"{self.what}: the object disappeared from the CDN") from exc
            except (CdnError, TimeoutError) as exc:
                reason = self._reason(exc)
                if self._opened is not None and not self._opened.done():
                    raise exc if isinstance(exc, CdnError) else CdnError(reason) from exc
                progressed = part.received - before >= self._chunk
                part.sampled = True  # a failed try's timing says nothing of the server
                if not progressed:
                    failures += 1
                where = f"{part.span()} at byte {part.start + part.received}"
                if failures > s.retries:
                    log.error(
                        "%s gave up on %s after %d failed tries: %s",
                        self.what,
                        where,
                        failures,
                        reason,
                    )
                    self._metrics.cdn_read_failed("retries-spent")
                    raise CdnReadFailed(
                        f"CDN {self.what} gave up on {part.span()} after {failures} failed "
                        f"tries: {reason}"
                    ) from exc
                delay = s.retry_backoff * (1 if progressed else 2 ** (failures - 1))
                delay = min(delay, MAX_BACKOFF) * _jitter.uniform(0.5, 1.0)
                log.warning(
                    "%s: %s (%s); trying again in %.1f s (%d of %d failed tries)",
                    self.what,
                    reason,
                    where,
                    delay,
                    failures,
                    s.retries,
                )
                self._metrics.cdn_read_retried()
                await asyncio.sleep(delay)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"stalled: no bytes for {self._settings.stall_timeout:g} s"
        return exc.detail if isinstance(exc, CdnError) else repr(exc)

    async def _attempt(self, part: _Part) -> None:
        """One request for the rest of ``part``, read to its end."""
        async with self._slots:
            await self._request(part)

    async def _request(self, part: _Part) -> None:
        stall = self._settings.stall_timeout
        position = part.start + part.received
        end = part.end if part.end is not None else part.request_end
        found: CdnRange | None = None
        clock = asyncio.get_running_loop().time
        asked = clock()
        try:
            async with asyncio.timeout(stall):
                found = await self._cdn.open_range(
                    self.bucket,
                    self.key,
                    position,
                    None if end is None else end - 1,
                    if_match=self.etag,
                )
            self._accept(part, found)
            assert part.end is not None
            while (position := part.start + part.received) < part.end:
                async with asyncio.timeout(stall):
                    data = await found.read(min(READ_SIZE, part.end - position))
                if not data:
                    raise CdnError(f"the CDN ended a {self.what} early")
                now = clock()
                if part.wait is None:
                    part.wait, part.first_at = now - asked, now
                data = data[: part.end - position]
                part.chunks.append(data)
                part.received += len(data)
                part.held += len(data)
                self.received += len(data)
                part.arrived.set()
                self._observe(part, len(data), now)
                if self._rate is not None:
                    await self._rate.take(len(data))
                while part.streamed and part.held >= self._chunk and not self._closing:
                    part.room.clear()
                    await part.room.wait()
        finally:
            if found is not None:
                found.close()

    def _accept(self, part: _Part, found: CdnRange) -> None:
        """Checks an answer against the version being read; the first one
        sets it (and the size, and with it the parts)."""
        if self.etag is None:
            self.etag = found.etag
        elif found.etag and found.etag != self.etag:
            raise ObjectChanged(f"{self.what}: the object changed on the CDN (another ETag)")
        if self.size is None:
            self.size = found.total
            part.end = found.start + found.length
            self._make_rule()
        elif found.total != self.size:
            raise ObjectChanged(f"{self.what}: the object changed on the CDN (another size)")
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)
            self._fill()
