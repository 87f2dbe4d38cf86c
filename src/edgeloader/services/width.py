"""How many ranged reads of one object run at once: the one rule, fed with
the timings of the object's own parts (docs/architecture.md, "Adaptive
width").

A read starts as one stream to the end of the object. The rule widens it by
one connection at a time, and only while both hold:

- **ranged reads start fast:** a part's first byte arrives quickly against
  the time its body takes (``wait <= FAST_START * body``). A server that
  reads the whole object for every ranged GET (moto, some gateways and
  origins) answers each part late; widening there multiplies that cost.
- **widening paid:** the object's throughput over the window after the last
  widening beat the one before it by ``GAIN``. A link that one stream
  fills, a slow client or a busy CPU stop the widening here.

A part that waits longer than its body (``wait > SLOW_START * body``) marks
ranged reads as slow to start: nothing widens any more, and the rest of the
object is read as one request. Between the two thresholds the width stays.

The rule is pure: it sees times and byte counts, never a clock or a socket,
so its decisions are tested with made-up timings (tests/unit/test_width.py).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAST_START", "GAIN", "SLOW_START", "WidthRule"]

# Measured first-byte waits against the body time of an 8 MiB part (the
# figures in docs/architecture.md): s3s-fs on loopback 1.5 ms against
# 30-80 ms (0.02-0.05), a link capped at 20 MB/s per connection with 20 ms
# of delay about 45 ms against 420 ms (0.1), moto about 117 ms against
# 12 ms (10). The thresholds sit well apart from all three.
FAST_START = 0.25
SLOW_START = 1.0
# Throughput must rise by a tenth to count as a gain: run-to-run noise on
# loopback is a few percent, a second connection on a capped link doubles it.
GAIN = 1.10


@dataclass(frozen=True)
class Sample:
    """One part's first request: seconds from the request to its first
    byte, and from there until it had ``window`` bytes (or ended)."""

    wait: float
    body: float


class WidthRule:
    """The width of one object's read.

    Feed it :meth:`sample` for each part's first request and
    :meth:`received` for every piece of any part; read :attr:`width` and
    :attr:`one_stream` after each call. ``window`` is the bytes that
    measure throughput after each widening, whatever the width (the part
    size): a wider read fills it sooner, so the next step comes sooner.
    """

    def __init__(self, ceiling: int, window: int) -> None:
        self.ceiling = max(1, ceiling)
        self.window = max(1, window)
        self.width = 1
        #: The rest of the object is one request: ranged reads start slowly.
        self.one_stream = False
        #: No more widening (a reason is in :attr:`why`).
        self.settled = self.ceiling == 1
        self.why = "the ceiling is one connection" if self.settled else ""
        self._fast: bool | None = None  # the latest part started fast
        self._total = 0
        self._mark: tuple[float, int] | None = None  # when and at which byte the window began
        self._before = 0.0  # throughput of the window before the last widening

    def sample(self, sample: Sample, now: float) -> None:
        """A part's first request reached its window (or its end)."""
        if sample.wait > SLOW_START * sample.body:
            if not self.one_stream:
                self.one_stream = True
                self._settle(
                    f"ranged reads start slowly ({sample.wait * 1e3:.0f} ms to the first byte, "
                    f"{sample.body * 1e3:.0f} ms of body)"
                )
            return
        self._fast = sample.wait <= FAST_START * sample.body
        if self._mark is None and not self.settled:
            # The first part: its body rate is the baseline of the first widening.
            if not self._fast:
                self._settle("the first byte is not fast against the body")
                return
            self._before = self.window / sample.body if sample.body > 0 else 0.0
            self._widen(now)

    def received(self, n: int, now: float) -> None:
        """``n`` more bytes of the object arrived."""
        self._total += n
        if self.settled or self._mark is None:
            return
        start, at = self._mark
        got = self._total - at
        if got < self.window:
            return
        rate = got / (now - start) if now > start else float("inf")
        if rate < GAIN * self._before:
            self._settle(f"{self.width} connections were no faster than {self.width - 1}")
        elif not self._fast:
            self._settle("ranged reads no longer start fast")
        elif self.width >= self.ceiling:
            self._settle(f"at the ceiling of {self.ceiling} connections")
        else:
            self._before = rate
            self._widen(now)

    def _widen(self, now: float) -> None:
        self.width += 1
        self._mark = (now, self._total)
        if self.width >= self.ceiling:
            self._settle(f"at the ceiling of {self.ceiling} connections")

    def _settle(self, why: str) -> None:
        if not self.settled:
            self.settled = True
            self.why = why
