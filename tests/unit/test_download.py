"""The parallel, resumable reader against a CDN stand-in, and what all
reads share: the byte budget and the rate cap."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any

import pytest

from edgeloader import _core, crypto
from edgeloader.config import DownloadSettings
from edgeloader.errors import CdnError, CdnReadFailed, NotFound, ObjectChanged
from edgeloader.metrics import Metrics
from edgeloader.services.budget import ByteBudget, TokenBucket
from edgeloader.services.download import Alignment, Download, Transfers

KiB = 1024
FAST = DownloadSettings(
    connections=4,
    part_size=64 * KiB,
    parallel_min=0,
    inflight_max=1 << 20,
    stall_timeout=0.2,
    retries=2,
    retry_backoff=0.001,
)


# -- the budget -------------------------------------------------------------------------


async def test_the_budget_grants_in_order_and_urgent_claims_first() -> None:
    budget = ByteBudget(100)
    first = budget.claim(60)
    await first.wait()
    ahead = budget.claim(50)
    urgent = budget.claim(50, urgent=True)
    waits = [asyncio.create_task(c.wait()) for c in (ahead, urgent)]
    await asyncio.sleep(0)
    assert (ahead.granted, urgent.granted) == (False, False)
    first.release(10)  # 50 free: the urgent claim goes first although it came later
    await asyncio.sleep(0)
    assert (ahead.granted, urgent.granted) == (False, True)
    first.close()
    await asyncio.gather(*waits)
    assert ahead.granted
    assert budget.used == 100
    ahead.close()
    urgent.close()
    assert budget.used == 0


async def test_a_large_claim_is_not_overtaken_and_is_cut_to_the_capacity() -> None:
    budget = ByteBudget(100)
    small = budget.claim(30)
    await small.wait()
    huge = budget.claim(1000)
    assert huge.size == 100
    tiny = budget.claim(1)
    waits = [asyncio.create_task(huge.wait()), asyncio.create_task(tiny.wait())]
    await asyncio.sleep(0)
    assert not tiny.granted  # behind the big one, though it would fit
    small.close()
    await asyncio.gather(*waits[:1])
    assert huge.granted
    huge.close()
    await waits[1]
    tiny.close()
    assert budget.used == 0


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    budget = ByteBudget(10)
    held = budget.claim(10)
    await held.wait()
    waiting = budget.claim(5)
    task = asyncio.create_task(waiting.wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.waiting == 0
    held.close()
    assert budget.used == 0


async def test_the_token_bucket_keeps_the_total_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(1000 * KiB, clock=lambda: now[0])
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    for _ in range(10):
        await bucket.take(100 * KiB)
    monkeypatch.undo()
    # 1000 KiB at 1000 KiB/s with a 250 KiB burst: 0.75 s of waiting.
    assert sum(slept) == pytest.approx(0.75, rel=0.01)


# -- alignment --------------------------------------------------------------------------


def test_alignment_of_v1_parts_is_the_block_grid_of_the_ciphertext() -> None:
    small = os.urandom(3072 - 5)
    align = Alignment.after(small)
    assert align.unit == 16
    assert (len(small) + align.up(1)) % 16 == 0
    assert (len(small) + align.up(100_000)) % 16 == 0


def test_alignment_of_v2_parts_is_whole_chunks() -> None:
    ct = _core.encrypt_v2(crypto.resource_key(), os.urandom(300_000))
    small = ct[:3072]
    align = Alignment.after(small)
    assert align.unit == (1 << 16) + 16
    boundary = align.up(1)
    start, _, _ = _core.v2_chunk_range(ct[:32], len(ct), 1)
    assert len(small) + boundary == start
    assert align.round(8 << 20) % align.unit == 0


# -- the reader, against a stand-in CDN -------------------------------------------------


class FakeRange:
    def __init__(self, cdn: FakeCdn, data: bytes, start: int, etag: str, total: int) -> None:
        self.what = "read of b/k"
        self.start = start
        self.length = len(data)
        self.total = total
        self.etag = etag
        self._cdn = cdn
        self._data = data
        self._pos = 0

    async def read(self, size: int) -> bytes:
        # A link: the first byte after ``first_byte`` s, then a piece every ``delay`` s.
        await asyncio.sleep(self._cdn.first_byte if self._pos == 0 else self._cdn.delay)
        absolute = self.start + self._pos
        if absolute in self._cdn.cut_at:
            self._cdn.cut_at.remove(absolute)
            raise CdnError("CDN unreachable during read of b/k")
        if absolute in self._cdn.stall_at:
            self._cdn.stall_at.remove(absolute)
            await asyncio.sleep(3600)
        piece = self._data[self._pos : self._pos + min(size, self._cdn.piece)]
        self._pos += len(piece)
        return piece

    def close(self) -> None:
        self._cdn.open -= 1


class FakeCdn:
    """Serves ``data``; cuts or stalls a read at given offsets (once each)."""

    def __init__(
        self, data: bytes, piece: int = 8 * KiB, *, first_byte: float = 0.0, delay: float = 0.0
    ) -> None:
        self.data = data
        self.etag = '"v1"'
        self.piece = piece
        self.first_byte = first_byte
        self.delay = delay
        self.cut_at: list[int] = []
        self.stall_at: list[int] = []
        self.requests: list[tuple[int, int | None, str | None]] = []
        self.open = 0
        self.peak_open = 0
        self.fail_first: Exception | None = None

    async def open_range(
        self, bucket: str, key: str, start: int = 0, end: int | None = None, **kw: Any
    ) -> FakeRange:
        if_match = kw.get("if_match")
        self.requests.append((start, end, if_match))
        await asyncio.sleep(0)
        if self.fail_first is not None:
            exc, self.fail_first = self.fail_first, None
            raise exc
        if if_match is not None and if_match != self.etag:
            raise ObjectChanged("read of b/k: the object changed on the CDN")
        last = len(self.data) - 1 if end is None else min(end, len(self.data) - 1)
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        return FakeRange(self, self.data[start : last + 1], start, self.etag, len(self.data))


def transfers(settings: DownloadSettings = FAST) -> Transfers:
    return Transfers(settings, chunk_size=16 * KiB, metrics=Metrics())


async def read(cdn: FakeCdn, shared: Transfers, **kw: Any) -> bytes:
    download = Download(cdn, shared, "b", "k", **kw)  # type: ignore[arg-type]
    try:
        await download.open()
        return b"".join([c async for c in download.chunks()])
    finally:
        await download.aclose()
        assert shared.budget.used == 0


@pytest.mark.parametrize("size", [1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 1000 * KiB + 7])
@pytest.mark.parametrize("known", [True, False])
async def test_every_size_reads_whole_in_order(size: int, known: bool) -> None:
    data = os.urandom(size)
    cdn = FakeCdn(data)
    kw: dict[str, Any] = {"size": size, "etag": cdn.etag} if known else {}
    assert await read(cdn, transfers(), **kw) == data


async def test_a_capped_link_widens_to_the_connection_limit() -> None:
    """Each connection is capped (a piece per millisecond) and answers at
    once: every widening pays, so the read goes to the ceiling, byte-identical
    while the width changes."""
    data = os.urandom(2 << 20)
    cdn = FakeCdn(data, piece=4 * KiB, delay=0.001)
    download = Download(cdn, transfers(), "b", "k")  # type: ignore[arg-type]
    await download.open()
    assert b"".join([c async for c in download.chunks()]) == data
    await download.aclose()
    assert cdn.peak_open == FAST.connections
    assert download.width == FAST.connections
    assert "ceiling" in download.settled
    # The first request streamed to the end until it was cut at a part boundary.
    assert cdn.requests[0] == (0, None, None)


@pytest.mark.parametrize("known", [True, False])
async def test_slow_ranged_starts_read_the_rest_as_one_request(known: bool) -> None:
    """A server that answers every ranged read late (it reads the whole
    object first) is read with one request: widening would multiply that."""
    data = os.urandom(1 << 20)
    cdn = FakeCdn(data, piece=32 * KiB, first_byte=0.05)
    kw: dict[str, Any] = {"size": len(data), "etag": cdn.etag} if known else {}
    download = Download(cdn, transfers(), "b", "k", **kw)  # type: ignore[arg-type]
    await download.open()
    assert b"".join([c async for c in download.chunks()]) == data
    await download.aclose()
    assert len(cdn.requests) == 1
    assert download.width == 1
    assert "slowly" in download.settled


async def test_one_connection_is_one_request() -> None:
    data = os.urandom(1 << 20)
    cdn = FakeCdn(data)
    assert await read(cdn, transfers(replace(FAST, connections=1))) == data
    assert cdn.requests == [(0, None, None)]


async def test_small_objects_are_one_stream() -> None:
    data = os.urandom(300 * KiB)
    cdn = FakeCdn(data)
    shared = transfers(replace(FAST, parallel_min=1 << 20))
    assert await read(cdn, shared, size=len(data), etag=cdn.etag) == data
    assert cdn.requests == [(0, len(data) - 1, cdn.etag)]


async def test_a_cut_part_resumes_from_its_first_missing_byte() -> None:
    data = os.urandom(500 * KiB)
    cdn = FakeCdn(data)
    cdn.cut_at = [40 * KiB, 200 * KiB]
    assert await read(cdn, transfers()) == data
    resumed = [r for r in cdn.requests if r[0] in (40 * KiB, 200 * KiB)]
    assert len(resumed) == 2
    assert all(r[2] == cdn.etag for r in resumed)  # pinned to the first answer's version


async def test_a_stalled_part_is_dropped_and_resumed() -> None:
    data = os.urandom(300 * KiB)
    cdn = FakeCdn(data)
    cdn.stall_at = [96 * KiB]
    assert await read(cdn, transfers()) == data
    assert any(r[0] == 96 * KiB for r in cdn.requests)


async def test_spent_retries_fail_the_read_and_say_why() -> None:
    data = os.urandom(300 * KiB)
    cdn = FakeCdn(data)
    cdn.stall_at = [96 * KiB] * 10
    with pytest.raises(CdnReadFailed, match="after 3 failed tries: stalled"):
        await read(cdn, transfers())


async def test_a_changed_object_aborts_the_read() -> None:
    data = os.urandom(600 * KiB)
    cdn = FakeCdn(data)
    shared = transfers(replace(FAST, connections=1, part_size=64 * KiB))
    download = Download(cdn, shared, "b", "k", size=len(data), etag='"v0"')  # type: ignore[arg-type]
    with pytest.raises(ObjectChanged):
        await download.open()
    await download.aclose()
    assert shared.budget.used == 0


async def test_a_new_etag_mid_read_aborts_it() -> None:
    data = os.urandom(600 * KiB)
    cdn = FakeCdn(data)
    cdn.cut_at = [296 * KiB]  # where a piece starts
    # One stream, so that the cut comes after the change, in the reader's order.
    shared = transfers(replace(FAST, connections=1))
    download = Download(cdn, shared, "b", "k")  # type: ignore[arg-type]
    received = b""

    async def consume() -> None:
        nonlocal received
        await download.open()
        async for chunk in download.chunks():
            received += chunk
            if len(received) > 100 * KiB:
                cdn.etag = '"v2"'

    with pytest.raises(ObjectChanged):
        await consume()
    await download.aclose()
    assert received == data[: len(received)]


async def test_a_failure_before_the_first_answer_is_not_retried() -> None:
    cdn = FakeCdn(os.urandom(100))
    cdn.fail_first = CdnError("CDN unreachable during read of b/k")
    with pytest.raises(CdnError, match="unreachable"):
        await read(cdn, transfers())
    assert len(cdn.requests) == 1


async def test_a_missing_object_is_not_found() -> None:
    cdn = FakeCdn(os.urandom(100))
    cdn.fail_first = NotFound("read of b/k: not found on the CDN")
    with pytest.raises(NotFound):
        await read(cdn, transfers())


async def test_closing_early_stops_every_request_and_frees_the_budget() -> None:
    data = os.urandom(2 << 20)
    cdn = FakeCdn(data, piece=1 * KiB)
    shared = transfers()
    download = Download(cdn, shared, "b", "k")  # type: ignore[arg-type]
    await download.open()
    seen = 0
    async for chunk in download.chunks():
        seen += len(chunk)
        if seen > 300 * KiB:
            break
    await download.aclose()
    assert shared.budget.used == 0
    assert cdn.open == 0
    assert all(t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())


async def test_the_budget_bounds_what_all_reads_hold() -> None:
    """Readers that never read: what they hold stays within the budget."""
    shared = transfers(replace(FAST, inflight_max=256 * KiB))
    cdns = [FakeCdn(os.urandom(1 << 20)) for _ in range(6)]
    downloads = [Download(c, shared, "b", "k") for c in cdns]  # type: ignore[arg-type]
    await asyncio.gather(*(d.open() for d in downloads[:2]))
    await asyncio.sleep(0.05)
    assert shared.budget.used <= 256 * KiB
    results = await asyncio.gather(*(_drain(d) for d in downloads), return_exceptions=True)
    assert [r == c.data for r, c in zip(results, cdns, strict=True)] == [True] * 6
    assert shared.budget.used == 0


async def _drain(download: Download) -> bytes:
    try:
        if download.size is None:
            await download.open()
        return b"".join([c async for c in download.chunks()])
    finally:
        await download.aclose()
