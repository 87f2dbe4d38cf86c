"""The HTTP server around the app: connection limits and timeouts that
aiohttp does not offer, and JSON answers from its HTTP parser.

- **Idle and slow headers.** aiohttp's keep-alive timer also runs from the
  moment a connection opens until a complete request head has arrived, so
  its ``keepalive_timeout`` is our header timeout: an idle connection, or
  one that trickles its headers, is closed after ``header_timeout``.
- **Slow bodies.** While a request body is unfinished and the loader is
  reading it, the client must deliver at least ``body_min_rate`` bytes a
  second, averaged over the last ``body_timeout`` seconds of reading (and
  at least one byte in them); a connection below it is closed. One byte
  every few seconds therefore cannot hold a connection, while an upload
  over a poor link (anything above the rate) goes on for as long as it
  needs. Seconds in which the loader itself is slow to consume the body
  (an upload waiting on the CDN: the transport is paused) do not count.
- **Writing is never timed out:** a long load over a slow link, a queued
  invoke or an event stream goes on as long as the client reads.
- **A cap on connections** below the descriptor limit. At the cap, the
  connection that has been idle longest (no request in progress) is closed
  to make room, so ``/health`` still answers under a flood of idle sockets;
  when every connection is busy, the new one is refused.
- **Parser errors** (a malformed request line or header) are answered in
  the usual ``{"detail"}`` JSON shape instead of aiohttp's text.

These hook into aiohttp's ``RequestHandler`` and ``Server``; the private
attributes used are named where they are used.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from edgeloader.config import Settings

log = logging.getLogger(__name__)

__all__ = ["ConnectionLimits", "LoaderRunner", "default_max_connections", "start_loader"]


def default_max_connections() -> int:
    """Half of the descriptors left after a reserve for files, the CDN,
    the engine and the databases; at least 32, at most 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(32, min(4096, (soft - 64) // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024  # bytes per second

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections or default_max_connections(),
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            body_min_rate=settings.body_min_rate,
        )


#: How often a connection's body rate is sampled, in seconds.
_TICK = 1.0


class _BodyRate:
    """The bytes a request body brought in each of the last seconds in
    which the loader was reading it."""

    def __init__(self, window: float, min_rate: int) -> None:
        self.ticks = max(1, round(window / _TICK))
        self.min_bytes = max(1, int(min_rate * self.ticks * _TICK))
        self._samples: collections.deque[int] = collections.deque(maxlen=self.ticks)
        self._counted = 0  # bytes received up to the last sample

    def sample(self, received: int, reading: bool) -> bool:
        """Records one tick; True when a full window of reading brought
        less than the minimum."""
        brought, self._counted = received - self._counted, received
        if not reading:
            return False  # the loader's pause, not the client's
        self._samples.append(brought)
        return len(self._samples) == self.ticks and sum(self._samples) < self.min_bytes

    def reset(self, received: int) -> None:
        self._samples.clear()
        self._counted = received


class _Handler(RequestHandler):
    """One connection, with the body-stall check and JSON parser errors."""

    def __init__(self, manager: _Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.header_timeout, **kwargs)
        self._limits = limits
        self._last_data = self._loop.time()
        self._received = 0
        self._rate = _BodyRate(limits.body_timeout, limits.body_min_rate)
        self._body_of: object = None  # the request whose body is being timed
        self._stall_timer: asyncio.TimerHandle | None = None

    @property
    def live(self) -> bool:
        """Open and not closing: what counts against the cap. A handler
        closed (or refused) stays in the server's list until the loop
        calls its ``connection_lost``; a burst must not count it."""
        transport = self.transport
        return transport is not None and not transport.is_closing()

    @property
    def idle_since(self) -> float | None:
        """When the connection last received bytes, if no request is in
        progress (aiohttp's ``_current_request`` and ``_messages``)."""
        if self._current_request is not None or self._messages:
            return None
        return self._last_data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, _Server)
        admitted = server.make_room()
        super().connection_made(transport)
        if not admitted:
            log.warning("connection refused: %d connections open", server.limits.max_connections)
            self.force_close()
            return
        self._stall_timer = self._loop.call_later(_TICK, self._check_body)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        self._received += len(data)
        super().data_received(data)

    def _check_body(self) -> None:
        """Once a tick: closes the connection when the body of the request
        in progress comes in below the minimum rate (module docstring)."""
        self._stall_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        request = self._current_request
        if request is None or request.content.is_eof():
            self._body_of = None
        else:
            if request is not self._body_of:  # a new body: a new window
                self._body_of = request
                self._rate.reset(self._received)
            reading = isinstance(transport, asyncio.ReadTransport) and transport.is_reading()
            if self._rate.sample(self._received, reading):
                log.info(
                    "closing a connection whose request body came slower than %d bytes/s over %g s",
                    self._limits.body_min_rate,
                    self._limits.body_timeout,
                )
                transport.close()
                return
        self._stall_timer = self._loop.call_later(_TICK, self._check_body)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.info("bad request from %s: %s", request.remote, message or status)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started; cannot send an error")
        detail = HTTPStatus(status).phrase if status >= 500 or not message else message
        response = web.json_response({"detail": detail}, status=status)
        response.force_close()
        return response


class _Server(web.Server):
    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        # aiohttp's Server keeps the handler's keyword arguments in _kwargs.
        return _Handler(self, loop=self._loop, limits=self.limits, **self._kwargs)

    def make_room(self) -> bool:
        """True when a new connection may stay, closing the longest-idle
        one if the cap is reached."""
        live = [h for h in self.connections if isinstance(h, _Handler) and h.live]
        if len(live) < self.limits.max_connections:
            return True
        idle = [(since, h) for h in live if (since := h.idle_since) is not None]
        if not idle:
            return False
        _, oldest = min(idle, key=lambda pair: pair[0])
        oldest.force_close()
        return True


class LoaderRunner(web.AppRunner):
    """An ``AppRunner`` whose server applies :class:`ConnectionLimits`."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, handler_cancellation=True, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # Rebuilt with the same handler, factory and options (aiohttp keeps
        # them in these attributes), as our subclass.
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            limits=self.limits,
            **plain._kwargs,
        )


async def start_loader(
    app: web.Application, settings: Settings, host: str, port: int, **runner_options: Any
) -> LoaderRunner:
    """Starts ``app`` on ``host:port`` under the settings' connection limits."""
    runner = LoaderRunner(app, ConnectionLimits.from_settings(settings), **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
