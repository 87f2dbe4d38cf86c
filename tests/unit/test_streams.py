"""read_ahead: order, errors in place, bounded, and nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from edgeloader.streams import read_ahead


class Source:
    """Counts what it produced and whether it was closed."""

    def __init__(self, items: int, fail_at: int | None = None) -> None:
        self.items = items
        self.fail_at = fail_at
        self.made = 0
        self.closed = False

    async def __call__(self) -> AsyncIterator[int]:
        try:
            for i in range(self.items):
                if i == self.fail_at:
                    raise ValueError(f"broken at {i}")
                self.made += 1
                yield i
                await asyncio.sleep(0)
        finally:
            self.closed = True


async def test_items_arrive_in_order_and_the_source_is_closed() -> None:
    source = Source(50)
    assert [i async for i in read_ahead(source(), 3)] == list(range(50))
    assert source.closed


async def test_an_error_comes_after_the_items_before_it() -> None:
    source = Source(10, fail_at=4)
    seen: list[int] = []

    async def consume() -> None:
        async for i in read_ahead(source(), 2):
            seen.append(i)

    with pytest.raises(ValueError, match="broken at 4"):
        await consume()
    assert seen == [0, 1, 2, 3]
    assert source.closed


async def test_it_runs_at_most_depth_ahead() -> None:
    source = Source(100)
    ahead = read_ahead(source(), 3)
    async with contextlib.aclosing(ahead):
        assert await anext(ahead) == 0
        for _ in range(20):  # the producer gets every chance to run on
            await asyncio.sleep(0)
        # The item taken, three waiting, one made and blocked on the full queue.
        assert source.made == 5


async def test_leaving_early_stops_the_producer_and_closes_the_source() -> None:
    source = Source(1000)
    ahead = read_ahead(source(), 2)
    async with contextlib.aclosing(ahead):
        async for i in ahead:
            if i == 5:
                break
    assert source.closed
    made = source.made
    await asyncio.sleep(0.01)
    assert source.made == made
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "read-ahead"]
    assert tasks == []
