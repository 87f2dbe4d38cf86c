"""A TCP proxy on loopback between the loader and an upstream, to make the
upstream misbehave in the middle of a stream. Byte counts are of what the
proxy forwarded to the loader, all connections together.

- ``budget``: after that many bytes the upstream is gone: the connection
  that crosses it is cut there, and every later one at once;
- ``cut_at``: byte counts at which the connection that crosses each one is
  cut (the upstream stays: later connections pass);
- ``stall_at``: from that byte count on nothing more is forwarded, on any
  connection, old or new; connections stay open, silent, forever;
- ``rate``: bytes per second, per connection (a capped link);
- ``latency``: seconds added to every byte on its way to the loader (a
  delay line: the rate is unchanged, each answer comes that much later).

``bytes_down`` counts what was forwarded; ``connections`` what was
accepted; ``peak_streams`` the most connections open at once that had each
forwarded at least ``STREAM`` bytes (a body, not a short answer whose
connection is closing); ``cuts`` the connections cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

_READ = 16 * 1024
STREAM = 64 * 1024


class CuttingProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        budget: int | None = None,
        *,
        cut_at: Iterable[int] = (),
        stall_at: int | None = None,
        rate: int | None = None,
        latency: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.budget = budget
        self.cut_at = sorted(cut_at)
        self.stall_at = stall_at
        self.rate = rate
        self.latency = latency
        self.bytes_down = 0
        self.connections = 0
        self.streams = 0
        self.peak_streams = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        forwarded = [0]
        try:
            if self.budget is not None and self.bytes_down >= self.budget:
                self.cuts += 1
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            upstream = asyncio.create_task(self._pipe_up(reader, up_writer))
            source: _Readable = up_reader
            if self.latency:
                source = delayed = _DelayLine(up_reader, self.latency)
            try:
                pacer = _Pacer(self.rate) if self.rate else None
                await self._pipe_down(source, writer, forwarded, pacer)
            finally:
                if self.latency:
                    delayed.close()
                upstream.cancel()
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if forwarded[0] >= STREAM:
                self.streams -= 1
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe_up(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(_READ):
                dst.write(data)
                await dst.drain()

    def _limit(self) -> tuple[int | None, str]:
        """The next byte count at which something happens, and what."""
        events = []
        if self.budget is not None:
            events.append((self.budget, "cut"))
        if self.cut_at:
            events.append((self.cut_at[0], "cut"))
        if self.stall_at is not None:
            events.append((self.stall_at, "stall"))
        return min(events) if events else (None, "")

    async def _pipe_down(
        self,
        src: _Readable,
        dst: asyncio.StreamWriter,
        forwarded: list[int],
        pacer: _Pacer | None,
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                limit, action = self._limit()
                if limit is not None and self.bytes_down >= limit and action == "stall":
                    await asyncio.Event().wait()  # silent until the test ends
                data = await src.read(_READ)
                if not data:
                    return
                limit, action = self._limit()
                if limit is not None and self.bytes_down + len(data) >= limit:
                    data = data[: limit - self.bytes_down]
                    await self._send(dst, data, forwarded, pacer)
                    if action == "stall":
                        continue
                    if self.cut_at and self.cut_at[0] == limit:
                        self.cut_at.pop(0)
                    self.cuts += 1
                    return
                await self._send(dst, data, forwarded, pacer)

    async def _send(
        self,
        dst: asyncio.StreamWriter,
        data: bytes,
        forwarded: list[int],
        pacer: _Pacer | None,
    ) -> None:
        if not data:
            return
        dst.write(data)
        await dst.drain()
        self.bytes_down += len(data)
        if forwarded[0] < STREAM <= forwarded[0] + len(data):
            self.streams += 1
            self.peak_streams = max(self.peak_streams, self.streams)
        forwarded[0] += len(data)
        if pacer is not None:
            await pacer.pace(len(data))


class _Pacer:
    """One connection's bytes at ``rate`` per second, on a schedule: the
    proxy's own reading and writing count towards each piece's time, so they
    do not lower the rate (a plain sleep per piece gave one connection about
    13 of 20 MB/s, and each of four about 10.5). A connection that fell
    behind catches up at most ``CATCH_UP`` seconds' worth in a burst."""

    CATCH_UP = 0.02

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._loop = asyncio.get_running_loop()
        self._due: float | None = None

    async def pace(self, n: int) -> None:
        now = self._loop.time()
        due = now if self._due is None else max(self._due, now - self.CATCH_UP)
        self._due = due + n / self._rate
        if self._due > now:
            await asyncio.sleep(self._due - now)


class _Readable(Protocol):
    async def read(self, n: int = -1, /) -> bytes: ...


class _DelayLine:
    """The bytes of ``src``, each handed out ``latency`` seconds after it
    arrived (a bounded queue keeps the upstream's flow control)."""

    def __init__(self, src: asyncio.StreamReader, latency: float) -> None:
        self._latency = latency
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)
        self._task = asyncio.create_task(self._fill(src))

    async def _fill(self, src: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(_READ):
                await self._queue.put((self._loop.time(), data))
        await self._queue.put((self._loop.time(), b""))

    async def read(self, n: int = -1, /) -> bytes:
        stamp, data = await self._queue.get()
        wait = stamp + self._latency - self._loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return data

    def close(self) -> None:
        self._task.cancel()
