"""What a run prints: read as the container writes it (an attach made
before the start; the engine keeps no log of its own), kept up to a cap per
stream, the rest read and dropped, so neither the host's disk nor the
loader's memory grows with a function that prints without end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from edgeloader.errors import EdgeloaderError

__all__ = ["STDERR", "STDOUT", "CapturedOutput", "OutputCapture", "Sink"]

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
#: Told each piece of output kept (``STDOUT`` or ``STDERR``, the bytes).
Sink = Callable[[int, bytes], None]


@dataclass(frozen=True)
class CapturedOutput:
    stdout: bytes
    stderr: bytes
    truncated: bool  # either was cut at the cap


class OutputCapture:
    """Reads a container's output in a task of its own, each stream kept up
    to ``limit`` bytes. ``take()`` returns what was kept since the last
    ``take()`` (a warm container's runs each get their own). ``sink``, when
    set, is told each piece kept, as it arrives (live output)."""

    def __init__(self, output: AsyncIterator[tuple[int, bytes]], limit: int) -> None:
        self.limit = limit
        self.sink: Sink | None = None
        self._kept = {STDOUT: bytearray(), STDERR: bytearray()}
        self._truncated = False
        self._arrivals = 0
        self._task = asyncio.create_task(self._pump(output), name="container output")

    async def _pump(self, output: AsyncIterator[tuple[int, bytes]]) -> None:
        async for stream, data in output:
            self._arrivals += 1
            # 1 is stdout; 2 stderr and 3 the engine's own errors go to stderr.
            which = STDOUT if stream == STDOUT else STDERR
            kept = self._kept[which]
            room = self.limit - len(kept)
            if len(data) > room:
                self._truncated = True
            if room > 0:
                kept += data[:room]
                if self.sink is not None:
                    self.sink(which, data[:room])

    async def ended(self, within: float) -> None:
        """Waits until the container's output ends (it stopped), at most
        ``within`` seconds: an engine slow to close the stream must not
        hold the run."""
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.warning("the container's output did not end within %g s", within)
        except EdgeloaderError as exc:
            log.warning("reading the container's output failed: %s", exc.detail)

    async def settle(self, quiet: float, within: float) -> None:
        """Waits until nothing has arrived for ``quiet`` seconds (at most
        ``within``): what a warm handler printed just before it answered
        may reach the loader just after the answer."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self._task.done():
            seen = self._arrivals
            await asyncio.sleep(quiet)
            if self._arrivals == seen:
                return

    def take(self) -> CapturedOutput:
        captured = CapturedOutput(
            bytes(self._kept[STDOUT]), bytes(self._kept[STDERR]), self._truncated
        )
        self._kept = {STDOUT: bytearray(), STDERR: bytearray()}
        self._truncated = False
        return captured

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EdgeloaderError):
            await self._task
