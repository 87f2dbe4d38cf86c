"""Failure throttling for logins, unlocks and API-key exchanges.

Keyed by client address and by identity, so neither one address trying
many accounts nor many addresses trying one account get far: after
``free_failures`` failures each further failure doubles the wait, capped at
``max_wait``. A key's failures are forgotten ``forget_after`` seconds after
its last one, or at once when an attempt with it succeeds.

An attempt is *reserved* before the credentials are checked, and settled
once their outcome is known (``Reservation``). A key never has more attempts in
flight than it has free failures left (one at a time once they are used
up), so concurrent guesses cannot all pass the check before the first
failure is recorded; an attempt beyond that waits for the ones in flight to
settle, and is then let through or refused as their outcome says. Honest
concurrent clients (several agents exchanging one key at start) wait a
moment instead of being refused.

Failures live in the auth store, so a restart does not forget them. Keys
are stored as SHA-256 digests: every entry has the same size, and the table
holds at most ``max_entries`` (derived from a byte limit), counting those
promised to attempts in flight. Only expired entries are ever removed; when
the table is full of live ones, an attempt that would need a new entry is
refused (429) until some expire. Traffic about other identities can
therefore never unblock an identity. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeloader.auth.store import AuthStore, ThrottleRow
from edgeloader.config import AuthLimits
from edgeloader.errors import TooManyAttempts

log = logging.getLogger(__name__)

#: What one throttle entry costs in the database, at most: a 32-byte key,
#: three numbers, its index entry and SQLite's page overhead (about 120
#: bytes measured; tests/unit/test_throttle.py checks the bound on disk).
ENTRY_BYTES = 160


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5
    first_wait: float = 1.0
    max_wait: float = 900.0
    forget_after: float = 3600.0
    max_entries: int = 65_536
    # The longest an attempt waits for those in flight before it or they
    # settle (longer than a Resource API call may take); then it is a 429.
    queue_wait: float = 120.0

    @classmethod
    def from_limits(cls, limits: AuthLimits) -> ThrottlePolicy:
        return cls(
            free_failures=limits.free_failures,
            first_wait=limits.first_wait,
            max_wait=limits.max_wait,
            forget_after=max(limits.forget_after, limits.max_wait),
            max_entries=max(1, limits.throttle_max_bytes // ENTRY_BYTES),
        )

    def wait_after(self, failures: int) -> float:
        """How long the next attempt must wait after ``failures`` failures."""
        over = failures - self.free_failures
        if over < 0:
            return 0.0
        return float(min(self.first_wait * 2 ** min(over, 64), self.max_wait))

    def in_flight(self, failures: int) -> int:
        """How many attempts a key may have in flight after ``failures``."""
        return max(1, self.free_failures - failures)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Reservation:
    """One reserved attempt; settle it exactly once (later calls do nothing)."""

    def __init__(self, throttle: Throttle, digests: tuple[bytes, ...], promised: int) -> None:
        self._throttle = throttle
        self._digests = digests
        self._promised = promised
        self._settled = False

    async def failed(self) -> None:
        """The credentials were wrong: the failure counts for every key."""
        await self._settle(self._throttle.store_failure)

    async def succeeded(self) -> None:
        """The credentials were right: the keys start afresh."""
        await self._settle(self._throttle.store_success)

    async def release(self) -> None:
        """The attempt was not judged (the Resource API failed, the caller
        left): it does not count."""
        await self._settle(None)

    async def _settle(self, write: Callable[[tuple[bytes, ...]], None] | None) -> None:
        if self._settled:
            return
        self._settled = True
        # Shielded: a caller cancelled mid-way still has its outcome recorded.
        await asyncio.shield(self._throttle.settle(self._digests, self._promised, write))


class Throttle:
    def __init__(
        self,
        store: AuthStore,
        policy: ThrottlePolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._changed = asyncio.Condition()
        self._pending: Counter[bytes] = Counter()
        self._promised = 0  # entries that attempts in flight may still need
        self._full_logged = -math.inf

    async def reserve(self, keys: Sequence[str]) -> Reservation:
        """Reserves one attempt for all ``keys``; raises ``TooManyAttempts``
        while any key must wait, or when the table is full and a key has no
        entry yet. Waits while a key has its share of attempts in flight."""
        digests = tuple(dict.fromkeys(_digest(k) for k in keys))
        deadline = time.monotonic() + self.policy.queue_wait
        async with self._changed:
            while True:
                rows = await asyncio.to_thread(self._rows, digests)
                now = self._clock()
                wait = max((r.blocked_until - now for r in rows.values() if r), default=0.0)
                if wait > 0:
                    raise TooManyAttempts(retry_after=math.ceil(wait))
                new = sum(1 for r in rows.values() if r is None)
                if new:
                    await self._make_room(new)
                if all(
                    self._pending[d] < self.policy.in_flight(r.failures if r else 0)
                    for d, r in rows.items()
                ):
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    raise TooManyAttempts(retry_after=1) from None
            self._pending.update(digests)
            self._promised += new
            return Reservation(self, digests, new)

    async def _make_room(self, new: int) -> None:
        size = await asyncio.to_thread(self._size)
        if size + self._promised + new <= self.policy.max_entries:
            return
        size, earliest = await asyncio.to_thread(self._prune)
        if size + self._promised + new <= self.policy.max_entries:
            return
        now = self._clock()
        if now - self._full_logged > 60:
            self._full_logged = now
            log.warning(
                "login throttle full (%d entries): refusing attempts by new addresses "
                "and identities until entries expire",
                self.policy.max_entries,
            )
        raise TooManyAttempts(retry_after=max(1, math.ceil((earliest or now + 1) - now)))

    async def settle(
        self,
        digests: tuple[bytes, ...],
        promised: int,
        write: Callable[[tuple[bytes, ...]], None] | None,
    ) -> None:
        async with self._changed:
            try:
                if write is not None:
                    await asyncio.to_thread(write, digests)
            finally:
                self._pending.subtract(digests)
                self._pending = +self._pending  # drop the zeros
                self._promised -= promised
                self._changed.notify_all()

    # Blocking parts, run in a worker thread.

    def _rows(self, digests: tuple[bytes, ...]) -> dict[bytes, ThrottleRow | None]:
        now = self._clock()
        with self.store.throttle() as table:
            rows = {}
            for digest in digests:
                row = table.get(digest)
                if row is not None and row.expires_at <= now:
                    table.delete(digest)
                    row = None
                rows[digest] = row
            return rows

    def _size(self) -> int:
        with self.store.throttle() as table:
            return table.size()

    def _prune(self) -> tuple[int, float | None]:
        with self.store.throttle() as table:
            table.prune(self._clock())
            return table.size(), table.earliest_expiry()

    def store_failure(self, digests: tuple[bytes, ...]) -> None:
        now = self._clock()
        with self.store.throttle() as table:
            for digest in digests:
                row = table.get(digest)
                failures = 1 + (row.failures if row and row.expires_at > now else 0)
                blocked = now + self.policy.wait_after(failures)
                entry = ThrottleRow(digest, failures, blocked, now + self.policy.forget_after)
                table.put(entry, new=row is None)

    def store_success(self, digests: tuple[bytes, ...]) -> None:
        with self.store.throttle() as table:
            for digest in digests:
                table.delete(digest)
