"""The event bus behind ``GET /api/events`` (docs/events.md).

Services publish small events (an unlock's state and progress, a function
run's state, pre-staging progress, security notices); each open stream
holds a :class:`Subscription` that receives the events its caller's role
may see.

- **Publishing never waits.** ``EventBus.publish`` is synchronous: it
  appends to each subscriber's queue and returns.
- **Queues are bounded.** A subscriber that does not keep up loses its
  oldest events, never the newest (the latest state is what matters), and
  is told: before its next event it receives a ``dropped`` event with the
  number lost, so it can read the state again over REST. Memory per
  subscriber stays at ``queue_size`` events, and the number of subscribers
  is capped too.
- **No identity takes every stream.** One identity (a user, an agent) holds
  at most ``max_per_identity`` streams: a new one ends its oldest (an agent
  that reconnects after a lost link replaces its half-open stream). When
  all ``max_subscribers`` are open, a newcomer with fewer streams than the
  identity holding the most ends that identity's oldest; otherwise it gets
  ``TooManyStreams`` (429). So the streams are shared, never starved.
- **Progress is paced.** :class:`Pacer` lets a publisher send progress at
  most every ``interval`` seconds; state changes always go out.
- **Closing ends every stream.** ``EventBus.close`` (when the service
  stops) gives each subscriber an ``end`` event, and every later
  ``subscribe`` gets a stream that ends at once.

Who sees what: events with no audience go to every authenticated role;
``security`` events only to ``Admin`` and ``ApiAdmin``; ``run-output``
events to those roles and to the identity that invoked the run (an event's
``subjects`` see it whatever their role).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from edgeloader.errors import TooManyStreams
from edgeloader.metrics import Metrics
from edgeloader.roles import ADMINS

__all__ = [
    "DROPPED",
    "END",
    "PREFETCH",
    "RUN",
    "RUN_FIELDS",
    "RUN_OUTPUT",
    "SECURITY",
    "UNLOCK",
    "Event",
    "EventBus",
    "Pacer",
    "Subscription",
    "run_event",
    "run_output_event",
    "security_event",
]

# Event types, the SSE ``event:`` field.
UNLOCK = "unlock"
RUN = "run"
#: What a run printed since the last one: its invoker's and admins' only.
RUN_OUTPUT = "run-output"
PREFETCH = "prefetch"
SECURITY = "security"
#: Told to a subscriber that lost events: ``{"dropped": N}``.
DROPPED = "dropped"
#: The last event of a stream: ``{"reason": ...}``.
END = "end"

#: The fields of a run record (its JSON) that a ``run`` event carries.
RUN_FIELDS = (
    "runId",
    "function",
    "status",
    "exitCode",
    "error",
    "queuedAt",
    "startedAt",
    "finishedAt",
    "durationMs",
)


@dataclass(frozen=True)
class Event:
    type: str
    data: Mapping[str, Any]
    #: The roles that see the event; None: every authenticated role.
    audience: frozenset[str] | None = field(default=None, compare=False)
    #: Identities that see it whatever their role (a run's invoker).
    subjects: frozenset[str] = field(default=frozenset(), compare=False)

    def visible_to(self, role: str, identity: str) -> bool:
        return self.audience is None or role in self.audience or identity in self.subjects


def run_event(record: Mapping[str, Any]) -> Event:
    """A run's state from its JSON record (``RUN_FIELDS`` of it)."""
    return Event(RUN, {name: record.get(name) for name in RUN_FIELDS})


def run_output_event(
    run_id: str, function: str, invoker: str | None, stdout: str, stderr: str
) -> Event:
    """What a run printed since its last ``run-output`` event, for admins
    and for the identity that invoked it."""
    return Event(
        RUN_OUTPUT,
        {"runId": run_id, "function": function, "stdout": stdout, "stderr": stderr},
        audience=ADMINS,
        subjects=frozenset({invoker}) if invoker else frozenset(),
    )


def security_event(kind: str, **details: Any) -> Event:
    """A security notice (``refresh-reuse``, ``throttled``), for admins only."""
    return Event(SECURITY, {"kind": kind, "at": time.time(), **details}, audience=ADMINS)


class Pacer:
    """At most one progress event per ``interval`` seconds."""

    def __init__(self, interval: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last = -math.inf

    def due(self) -> bool:
        """True (and the interval starts again) if a progress event may go out now."""
        now = self._clock()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

    def sent(self) -> None:
        """An event went out anyway (a state change): the interval starts again."""
        self._last = self._clock()


class Subscription:
    """One stream's queue. Use it as a context manager: leaving unsubscribes."""

    def __init__(self, bus: EventBus, role: str, identity: str, size: int) -> None:
        self.role = role
        self.identity = identity
        self._bus = bus
        self._items: collections.deque[Event] = collections.deque()
        self._size = size
        self._dropped = 0
        self._ended: Event | None = None
        self._wakeup = asyncio.Event()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bus._unsubscribe(self)

    def _offer(self, event: Event) -> bool:
        """Queues ``event``; False if an older one had to make room."""
        full = len(self._items) >= self._size
        if full:
            self._items.popleft()
            self._dropped += 1
        self._items.append(event)
        self._wakeup.set()
        return not full

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = Event(END, {"reason": reason})
            self._wakeup.set()

    async def next(self, within: float | None = None) -> Event | None:
        """The next event: a ``dropped`` notice first if events were lost,
        then the queued events in order, then ``end`` once the bus closed
        (again on every later call). None if nothing came ``within`` seconds."""
        while True:
            if self._dropped:
                lost, self._dropped = self._dropped, 0
                return Event(DROPPED, {"dropped": lost})
            if self._items:
                return self._items.popleft()
            if self._ended is not None:
                return self._ended
            self._wakeup.clear()
            try:
                async with asyncio.timeout(within):
                    await self._wakeup.wait()
            except TimeoutError:
                return None


class EventBus:
    def __init__(
        self,
        queue_size: int = 256,
        max_subscribers: int = 64,
        metrics: Metrics | None = None,
        max_per_identity: int = 8,
    ) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.max_per_identity = min(max_per_identity, max_subscribers)
        # Oldest first, per identity: the order in which streams give way.
        self._streams: dict[str, list[Subscription]] = {}
        self._closed = False

    @property
    def subscribers(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def subscribe(self, role: str, identity: str) -> Subscription:
        """A queue for ``identity`` of ``role``, which may end an older
        stream (module docstring); ``TooManyStreams`` when it may not.
        After ``close`` the subscription ends at once."""
        subscription = Subscription(self, role, identity, self.queue_size)
        if self._closed:
            subscription._end("service stopping")
            return subscription
        mine = self._streams.get(identity, [])
        if len(mine) >= self.max_per_identity:
            self._give_way(mine[0], "replaced by a newer stream of the same caller")
        elif self.subscribers >= self.max_subscribers:
            most = max(self._streams.values(), key=len)
            if len(most) <= len(mine) + 1:
                raise TooManyStreams(
                    f"{self.max_subscribers} event streams are open; retry later", retry_after=5
                )
            self._give_way(most[0], "the stream limit is shared: another caller needed one")
        self._streams.setdefault(identity, []).append(subscription)
        return subscription

    def _give_way(self, subscription: Subscription, reason: str) -> None:
        subscription._end(reason)
        self._unsubscribe(subscription)

    def _unsubscribe(self, subscription: Subscription) -> None:
        streams = self._streams.get(subscription.identity, [])
        if subscription in streams:
            streams.remove(subscription)
        if not streams:
            self._streams.pop(subscription.identity, None)

    def publish(self, event: Event) -> None:
        """Queues ``event`` for every subscriber that may see it; never waits."""
        dropped = 0
        for subscription in self._all():
            if not event.visible_to(subscription.role, subscription.identity):
                continue
            if not subscription._offer(event):
                dropped += 1
        if dropped and self.metrics is not None:
            self.metrics.events_dropped.inc(dropped)

    def close(self, reason: str = "service stopping") -> None:
        """Ends every stream; later subscriptions end at once."""
        self._closed = True
        for subscription in self._all():
            subscription._end(reason)
        self._streams.clear()

    def _all(self) -> list[Subscription]:
        return [s for streams in self._streams.values() for s in streams]
