"""Failure throttling for login and token exchange.

Keyed by client address and by identity, so neither one address trying
many accounts nor many addresses trying one account get far: after
``free_failures`` failures each further failure doubles the wait, capped.
State is in memory and bounded; a restart forgets it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgeloader.errors import TooManyAttempts


@dataclass
class _Entry:
    failures: int = 0
    blocked_until: float = 0.0


class Throttle:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def check(self, *keys: str) -> None:
        """Raises ``TooManyAttempts`` (429) while any key is blocked."""
        now = self._clock()
        wait = max(
            (e.blocked_until - now for k in keys if (e := self._entries.get(k))), default=0.0
        )
        if wait > 0:
            raise TooManyAttempts(retry_after=math.ceil(wait))

    def failure(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            entry = self._entries.pop(key, None) or _Entry()
            entry.failures += 1
            over = entry.failures - self.free_failures
            if over >= 0:
                entry.blocked_until = now + min(self.base_delay * 2**over, self.max_delay)
            self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def success(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)
