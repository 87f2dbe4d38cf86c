"""The event bus: order, role filtering, bounded queues, pacing, closing."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloader import metrics
from edgeloader.errors import TooManyStreams
from edgeloader.events import (
    DROPPED,
    END,
    RUN,
    RUN_FIELDS,
    RUN_OUTPUT,
    SECURITY,
    UNLOCK,
    Event,
    EventBus,
    Pacer,
    Subscription,
    run_event,
    run_output_event,
    security_event,
)
from edgeloader.roles import Role
from edgeloader.services.prefetch import PrefetchStatus
from edgeloader.services.unlock import UnlockState, UnlockStatus


def progress(n: int) -> Event:
    return UnlockStatus(state=UnlockState.DECRYPTING, bytes_done=n, bytes_total=100).event()


async def drain(subscription: Subscription) -> list[Event]:
    """Every event queued now (``next`` with no wait)."""
    events = []
    while (event := await subscription.next(0)) is not None:
        events.append(event)
        if event.type == END:
            break
    return events


async def test_events_arrive_in_order_for_every_subscriber() -> None:
    bus = EventBus()
    with bus.subscribe(Role.OPERATOR, "operator") as one, bus.subscribe(Role.ADMIN, "admin") as two:
        for n in range(5):
            bus.publish(progress(n))
        for subscription in (one, two):
            got = await drain(subscription)
            assert [e.data["bytesDone"] for e in got] == [0, 1, 2, 3, 4]


async def test_next_waits_for_a_publish() -> None:
    bus = EventBus()
    with bus.subscribe(Role.OPERATOR, "operator") as subscription:
        waiting = asyncio.create_task(subscription.next())
        await asyncio.sleep(0)
        assert not waiting.done()
        bus.publish(progress(1))
        assert (await waiting) == progress(1)


async def test_nothing_within_the_wait_is_none() -> None:
    bus = EventBus()
    with bus.subscribe(Role.OPERATOR, "operator") as subscription:
        assert await subscription.next(0) is None


async def test_security_events_reach_admins_only() -> None:
    bus = EventBus()
    roles = [Role(name) for name in Role.names()]
    subscriptions = {role: bus.subscribe(role, role) for role in roles}
    bus.publish(security_event("refresh-reuse", subject="user:a@example.org"))
    bus.publish(progress(7))
    for role, subscription in subscriptions.items():
        types = [e.type for e in await drain(subscription)]
        if role in (Role.ADMIN, Role.API_ADMIN):
            assert types == [SECURITY, UNLOCK], role
        else:
            assert types == [UNLOCK], role
        subscription.__exit__(None, None, None)
    assert bus.subscribers == 0


async def test_run_output_reaches_admins_and_the_invoker_only() -> None:
    bus = EventBus()
    invoker = bus.subscribe(Role.OPERATOR, "user:me")
    other = bus.subscribe(invoker.role, "user:other")
    admin = bus.subscribe(Role.ADMIN, "user:admin")
    api_admin = bus.subscribe(Role.API_ADMIN, "apikey:ops")
    bus.publish(run_output_event("r1", "greet", "user:me", "hi\n", ""))
    bus.publish(run_output_event("r2", "greet", None, "", "nobody's\n"))
    assert [e.data["runId"] for e in await drain(invoker)] == ["r1"]
    assert await drain(other) == []
    for subscription in (admin, api_admin):
        events = await drain(subscription)
        assert [(e.type, e.data["runId"]) for e in events] == [
            (RUN_OUTPUT, "r1"),
            (RUN_OUTPUT, "r2"),
        ]
    assert events[0].data == {"runId": "r1", "function": "greet", "stdout": "hi\n", "stderr": ""}


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus(queue_size=3)
    with bus.subscribe(Role.OPERATOR, "slow") as slow, bus.subscribe(Role.OPERATOR, "fast") as fast:
        bus.publish(progress(0))
        assert (await fast.next(0)) == progress(0)
        for n in range(1, 8):
            bus.publish(progress(n))  # never waits, whatever the queues hold
            assert (await fast.next(0)) == progress(n)
        got = await drain(slow)
    assert got[0] == Event(DROPPED, {"dropped": 5})
    assert [e.data["bytesDone"] for e in got[1:]] == [5, 6, 7]


async def test_drops_are_counted_in_the_bus_metrics() -> None:
    registry = metrics.Metrics()
    bus = EventBus(queue_size=2, metrics=registry)
    with bus.subscribe(Role.OPERATOR, "operator"):
        for n in range(5):
            bus.publish(progress(n))
    assert _sample(registry, "edgeloader_events_dropped_total") == 3


async def test_queues_are_bounded_in_memory() -> None:
    bus = EventBus(queue_size=16)
    with bus.subscribe(Role.OPERATOR, "operator") as subscription:
        for n in range(10_000):
            bus.publish(progress(n))
        assert len(subscription._items) == 16


async def test_close_ends_every_stream_and_later_ones_at_once() -> None:
    bus = EventBus()
    subscription = bus.subscribe(Role.OPERATOR, "operator")
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    bus.publish(progress(1))
    bus.close()
    assert (await waiting) == progress(1)
    end = await subscription.next()
    assert end == Event(END, {"reason": "service stopping"})
    assert await subscription.next() == end  # and again
    assert bus.subscribers == 0
    bus.publish(progress(2))  # nobody left: nothing happens
    with bus.subscribe(Role.ADMIN, "admin") as late:
        assert await late.next() == Event(END, {"reason": "service stopping"})


async def test_queued_events_come_before_the_end() -> None:
    bus = EventBus()
    with bus.subscribe(Role.OPERATOR, "operator") as subscription:
        bus.publish(progress(1))
        bus.publish(progress(2))
        bus.close()
        assert [e.type for e in await drain(subscription)] == [UNLOCK, UNLOCK, END]


async def test_the_number_of_streams_is_capped() -> None:
    bus = EventBus(max_subscribers=2)
    with bus.subscribe(Role.OPERATOR, "one"), bus.subscribe(Role.OPERATOR, "two"):
        with pytest.raises(TooManyStreams) as refused:
            bus.subscribe(Role.ADMIN, "admin")
        assert refused.value.status == 429
        assert refused.value.retry_after > 0
    with bus.subscribe(Role.ADMIN, "admin"):  # leaving made room
        assert bus.subscribers == 1


async def test_one_caller_past_its_own_cap_replaces_its_oldest_stream() -> None:
    bus = EventBus(max_subscribers=64, max_per_identity=3)
    streams = [bus.subscribe(Role.OPERATOR, "agent") for _ in range(5)]
    assert bus.subscribers == 3
    for old in streams[:2]:
        ended = await old.next(0)
        assert ended is not None
        assert ended.type == END
        assert "newer stream" in ended.data["reason"]
    for live in streams[2:]:
        assert await live.next(0) is None


async def test_a_caller_who_holds_every_stream_gives_way_to_another() -> None:
    bus = EventBus(max_subscribers=4, max_per_identity=4)
    hog = [bus.subscribe(Role.OPERATOR, "hog") for _ in range(4)]
    admin = bus.subscribe(Role.ADMIN, "admin")  # not a 429: the hog's oldest ends
    assert (await hog[0].next(0)).type == END  # type: ignore[union-attr]
    assert bus.subscribers == 4
    second = bus.subscribe(Role.ADMIN, "admin")  # 3 against 1: the hog gives way again
    assert (await hog[1].next(0)).type == END  # type: ignore[union-attr]
    # 2 against 2: sharing evenly, a third stream of the admin's is refused.
    with pytest.raises(TooManyStreams):
        bus.subscribe(Role.ADMIN, "admin")
    for live in (hog[2], hog[3], admin, second):
        assert await live.next(0) is None


def test_pacer_lets_one_event_through_per_interval() -> None:
    now = [100.0]
    pacer = Pacer(0.25, clock=lambda: now[0])
    assert pacer.due()
    assert [pacer.due() for _ in range(1000)] == [False] * 1000  # no time passed
    now[0] += 0.25
    assert pacer.due()
    now[0] += 0.1
    pacer.sent()  # a state change went out: the interval starts again
    now[0] += 0.2
    assert not pacer.due()
    now[0] += 0.05
    assert pacer.due()


def test_event_shapes() -> None:
    ready = UnlockStatus(state=UnlockState.READY, bytes_done=10, bytes_total=10, images=["a:1"])
    assert ready.event() == Event(
        UNLOCK,
        {"state": "ready", "error": None, "bytesDone": 10, "bytesTotal": 10, "images": ["a:1"]},
    )
    record = {name: name for name in RUN_FIELDS} | {"result": {"big": "x" * 1000}, "version": 3}
    assert run_event(record) == Event(RUN, {name: name for name in RUN_FIELDS})
    waiting = PrefetchStatus(
        folder="models",
        name="m.bin",
        state="waiting",
        bytes_done=1,
        bytes_total=2,
        error="the CDN is down",
    )
    assert waiting.wire() == (
        {
            "folder": "models",
            "name": "m.bin",
            "state": "waiting",
            "bytesDone": 1,
            "bytesTotal": 2,
            "error": "the CDN is down",
        }
    )
    notice = security_event("throttled", subject="user:x", retryAfter=4)
    assert notice.type == SECURITY
    assert notice.audience == frozenset({Role.ADMIN, Role.API_ADMIN})
    assert notice.data["kind"] == "throttled"
    assert notice.data["retryAfter"] == 4


def test_auth_events_are_a_fixed_set() -> None:
    registry = metrics.Metrics()
    registry.auth_event("login_ok")
    with pytest.raises(ValueError, match="unknown auth event"):
        registry.auth_event("made-up")
    assert _sample(registry, "edgeloader_auth_events_total", event="login_ok") == 1


def test_each_app_counts_in_its_own_registry() -> None:
    one, two = metrics.Metrics(), metrics.Metrics()
    one.load_sent("cdn", 10)
    two.load_sent("cdn", 5)
    one.load_sent("cache", 1)
    assert _sample(one, "edgeloader_load_bytes_total", source="cdn") == 10
    assert _sample(one, "edgeloader_load_bytes_total", source="cache") == 1
    assert _sample(two, "edgeloader_load_bytes_total", source="cdn") == 5


def _sample(registry: metrics.Metrics, name: str, **labels: str) -> float:
    body, _ = registry.exposition()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")
