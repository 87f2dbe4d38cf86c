"""A run's live output: batched into ``run-output`` events, whole
characters, nothing after the close, at most one event per interval."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from edgeloader.events import RUN_OUTPUT, Event
from edgeloader.functions.live import OutputFeed
from edgeloader.functions.output import STDERR, STDOUT, OutputCapture


async def test_writes_within_an_interval_go_out_together() -> None:
    events: list[Event] = []
    feed = OutputFeed(events.append, "r1", "greet", "user:me", interval=0.1)
    for n in range(100):
        feed.write(STDOUT, f"line {n}\n".encode())
        feed.write(STDERR, b"e")
    await feed.close()
    # The first write goes out at once; the rest waited for the interval.
    assert len(events) == 2
    assert {e.type for e in events} == {RUN_OUTPUT}
    assert "".join(e.data["stdout"] for e in events) == "".join(f"line {n}\n" for n in range(100))
    assert "".join(e.data["stderr"] for e in events) == "e" * 100
    assert events[0].subjects == frozenset({"user:me"})
    feed.write(STDOUT, b"late")
    await asyncio.sleep(0.15)
    assert len(events) == 2


async def test_never_more_than_one_event_per_interval() -> None:
    events: list[Event] = []
    times: list[float] = []
    loop = asyncio.get_running_loop()

    def publish(event: Event) -> None:
        events.append(event)
        times.append(loop.time())

    feed = OutputFeed(publish, "r1", "greet", None, interval=0.1)
    for _ in range(40):
        feed.write(STDOUT, b"x")
        await asyncio.sleep(0.01)
    await feed.close()
    assert "".join(e.data["stdout"] for e in events) == "x" * 40
    assert 1 < len(events) < 40
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.1 - 1e-3, gaps


async def test_a_character_split_between_writes_is_whole() -> None:
    events: list[Event] = []
    feed = OutputFeed(events.append, "r1", "greet", None)
    data = "é€".encode()
    for byte in data:
        feed.write(STDOUT, bytes([byte]))
    await feed.close()
    assert "".join(e.data["stdout"] for e in events) == "é€"
    assert "\ufffd" not in "".join(e.data["stdout"] for e in events)


async def test_the_capture_feeds_only_what_it_keeps() -> None:
    async def output() -> AsyncIterator[tuple[int, bytes]]:
        yield STDOUT, b"abcdef"
        yield 3, b"engine says"
        yield STDOUT, b"ghij"

    seen: list[tuple[int, bytes]] = []
    capture = OutputCapture(output(), limit=8)
    capture.sink = lambda stream, data: seen.append((stream, data))
    await capture.ended(5)
    assert seen == [(STDOUT, b"abcdef"), (STDERR, b"engine s"), (STDOUT, b"gh")]
    kept = capture.take()
    assert (kept.stdout, kept.stderr, kept.truncated) == (b"abcdefgh", b"engine s", True)
