"""What all CDN reads of the process share: the budget of bytes they may
hold in memory, and the optional cap on their total rate.

Both are fair across loads: claims on the budget are granted in order of
arrival (urgent ones first: a load's current part before anyone's read
ahead), and the rate cap is one token bucket for every connection.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

__all__ = ["ByteBudget", "Claim", "TokenBucket"]


class Claim:
    """Bytes of a :class:`ByteBudget`, held from :meth:`wait` until
    released, in pieces (:meth:`release`) or all at once (:meth:`close`)."""

    def __init__(self, budget: ByteBudget, size: int, urgent: bool, order: int) -> None:
        self.size = size
        self.held = 0
        self.urgent = urgent
        self._budget = budget
        self._order = order
        self._granted: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def granted(self) -> bool:
        return self._granted is not None and self._granted.done()

    def sort_key(self) -> tuple[bool, int]:
        return (not self.urgent, self._order)

    async def wait(self) -> None:
        """Until the bytes are granted. Cancelling gives up the place."""
        if self._granted is None:
            self._granted = asyncio.get_running_loop().create_future()
            self._budget._enqueue(self)
        try:
            await asyncio.shield(self._granted)
        except asyncio.CancelledError:
            if not self.granted:
                self.close()
            raise

    def hurry(self) -> None:
        """The bytes are needed now (the reader reached them): ahead of
        every read-ahead claim."""
        if not self.urgent:
            self.urgent = True
            self._budget._reorder()

    def release(self, n: int) -> None:
        """Gives back ``n`` of the held bytes."""
        n = min(n, self.held)
        if n > 0:
            self.held -= n
            self._budget._give_back(n)

    def close(self) -> None:
        """Gives back what is held and leaves the queue; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.granted:
            self.release(self.held)
        else:
            self._budget._withdraw(self)
            if self._granted is not None and not self._granted.done():
                self._granted.cancel()


class ByteBudget:
    """At most ``capacity`` bytes held at once by all claims together.

    A claim larger than the capacity is cut to it, so that it can be
    granted at all. Grants follow the queue strictly: a large claim at the
    head is not overtaken by smaller ones behind it, so none waits forever.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._queue: list[Claim] = []
        self._orders = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def claim(self, size: int, *, urgent: bool = False) -> Claim:
        """A claim for ``size`` bytes; nothing is held until its ``wait``."""
        return Claim(self, max(0, min(size, self.capacity)), urgent, next(self._orders))

    def _enqueue(self, claim: Claim) -> None:
        self._queue.append(claim)
        self._reorder()

    def _reorder(self) -> None:
        self._queue.sort(key=Claim.sort_key)
        self._grant()

    def _withdraw(self, claim: Claim) -> None:
        if claim in self._queue:
            self._queue.remove(claim)
            self._grant()

    def _give_back(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._queue and self.used + self._queue[0].size <= self.capacity:
            claim = self._queue.pop(0)
            self.used += claim.size
            claim.held = claim.size
            if claim._granted is not None and not claim._granted.done():
                claim._granted.set_result(None)


class TokenBucket:
    """A total rate of ``rate`` bytes per second, shared by every caller,
    with bursts of up to a quarter of a second's worth."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(rate / 4, 64 * 1024)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    async def take(self, n: int) -> None:
        """Counts ``n`` bytes that were read; waits until the rate allows them.

        Tokens may go below zero: each caller waits for its own debt, so
        callers that take at once wait in turn and the total stays at
        ``rate``.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
