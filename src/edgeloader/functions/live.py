"""A run's output as it is printed: ``run-output`` events (docs/events.md).

:class:`OutputCapture` hands the feed only the bytes it keeps, so the
events of a run never carry more than its output cap. What arrives within
``interval`` seconds of the last event goes out together in the next one:
at most one event per interval (ten a second) per run, however often the
function writes. The run's final ``run`` event is published after
:meth:`OutputFeed.close`, so a follower sees all the output before the end.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable

from edgeloader.events import Event, run_output_event
from edgeloader.functions.output import STDOUT

__all__ = ["INTERVAL", "OutputFeed"]

#: Seconds between two events of one run at least.
INTERVAL = 0.1


class OutputFeed:
    def __init__(
        self,
        publish: Callable[[Event], None],
        run_id: str,
        function: str,
        invoker: str | None,
        interval: float = INTERVAL,
    ) -> None:
        self._publish = publish
        self._run = (run_id, function, invoker)
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._last = -interval
        # Incremental: a character split between two writes is decoded whole.
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in (1, 2)
        }
        self._pending: dict[int, list[str]] = {1: [], 2: []}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def write(self, stream: int, data: bytes) -> None:
        """Output the run printed (``stream`` 1 stdout, else stderr)."""
        if self._closed:
            return
        key = 1 if stream == STDOUT else 2
        text = self._decoders[key].decode(data)
        if not text:
            return
        self._pending[key].append(text)
        if self._timer is None:
            wait = self._last + self._interval - self._loop.time()
            if wait <= 0:
                self._flush()
            else:
                self._timer = self._loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        self._timer = None
        stdout = "".join(self._pending[1])
        stderr = "".join(self._pending[2])
        self._pending = {1: [], 2: []}
        if stdout or stderr:
            self._last = self._loop.time()
            self._publish(run_output_event(*self._run, stdout, stderr))

    async def close(self) -> None:
        """Sends what is left, once its interval has passed; later writes
        are dropped."""
        if self._closed:
            return
        self._closed = True
        for key, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._pending[key].append(tail)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if any(self._pending.values()):
            wait = self._last + self._interval - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._flush()

    def discard(self) -> None:
        """Drops what is pending (the run was interrupted)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
