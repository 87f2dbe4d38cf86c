"""Who runs when.

- At most ``max_runs`` runs at once, all functions together.
- Per function, at most ``concurrency`` runs at once, and at most ``queue``
  more admitted while they wait: an invocation beyond that is refused at
  once (:class:`QueueFull`, 429 with ``Retry-After``), so nothing waits
  unbounded and a refused run leaves no record.

An admitted run holds a :class:`Ticket` until it ends; it waits first for a
slot of its function, then for a global one, each in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator

from edgeloader.errors import QueueFull

_RECENT_RUNS = 20  # durations kept per function, for Retry-After
_MAX_RETRY_AFTER = 3600


class _Lane:
    """One function's slots and waiters."""

    def __init__(self, recent: collections.deque[float]) -> None:
        self.admitted = 0  # holding a ticket: waiting or running
        self.running = 0  # holding one of the function's slots
        self.concurrency = 1
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.recent = recent  # the last runs' durations, kept while the lane comes and goes

    async def acquire(self) -> None:
        if self.running < self.concurrency and not self.waiters:
            self.running += 1
            return
        granted = asyncio.get_running_loop().create_future()
        self.waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            else:
                self.waiters.remove(granted)
            raise

    def release(self) -> None:
        self.running -= 1
        # A lowered concurrency takes effect as runs end.
        while self.waiters and self.running < self.concurrency:
            granted = self.waiters.popleft()
            if not granted.done():
                self.running += 1
                granted.set_result(None)

    def retry_after(self) -> int:
        """Seconds until a queue place is likely to be free."""
        if not self.recent:
            return 1
        typical = sorted(self.recent)[len(self.recent) // 2]
        ahead = self.admitted - self.concurrency + 1
        return max(1, min(_MAX_RETRY_AFTER, math.ceil(typical * ahead / self.concurrency)))


class Ticket:
    """An admitted run's place; :meth:`close` it whatever happens."""

    def __init__(self, scheduler: Scheduler, name: str, lane: _Lane) -> None:
        self._scheduler = scheduler
        self._name = name
        self._lane = lane
        self._closed = False

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Waits for a slot of the function, then for a global one."""
        await self._lane.acquire()
        try:
            async with self._scheduler.global_slots:
                loop = asyncio.get_running_loop()
                started = loop.time()
                try:
                    yield
                finally:
                    self._lane.recent.append(loop.time() - started)
        finally:
            self._lane.release()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._scheduler.leave(self._name, self._lane)


class Scheduler:
    def __init__(self, max_runs: int) -> None:
        self.global_slots = asyncio.Semaphore(max_runs)
        self._lanes: dict[str, _Lane] = {}
        self._recent: dict[str, collections.deque[float]] = {}

    def admit(self, name: str, concurrency: int, queue: int) -> Ticket:
        """A ticket for one more run of ``name``, or :class:`QueueFull`."""
        lane = self._lanes.get(name)
        if lane is None:
            recent = self._recent.setdefault(name, collections.deque(maxlen=_RECENT_RUNS))
            lane = self._lanes[name] = _Lane(recent)
        lane.concurrency = concurrency
        if lane.admitted >= concurrency + queue:
            raise QueueFull(
                f"function {name} is at its limit: {concurrency} running or due to, "
                f"and its queue of {queue} is full",
                retry_after=lane.retry_after(),
            )
        lane.admitted += 1
        return Ticket(self, name, lane)

    def leave(self, name: str, lane: _Lane) -> None:
        lane.admitted -= 1
        if lane.admitted == 0 and self._lanes.get(name) is lane:
            del self._lanes[name]

    def forget(self, name: str) -> None:
        """Drops what is kept about a deleted function (its runs go on)."""
        self._recent.pop(name, None)

    def waiting(self, name: str) -> int:
        """Runs of ``name`` admitted but not running yet."""
        lane = self._lanes.get(name)
        return 0 if lane is None else lane.admitted - lane.running
