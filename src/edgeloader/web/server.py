"""The HTTP server around the app: connection limits and timeouts that
aiohttp does not offer, and JSON answers from its HTTP parser.

- **Idle and slow headers.** aiohttp's keep-alive timer also runs from the
  moment a connection opens until a complete request head has arrived, so
  its ``keepalive_timeout`` is our header timeout: an idle connection, or
  one that trickles its headers, is closed after ``header_timeout``.
- **Slow bodies.** While a handler waits for request body bytes that do
  not come (the transport is reading, the body is unfinished, and nothing
  arrived for ``body_timeout``), the connection is closed. When the loader
  itself is slow to consume a body (an upload waiting on the CDN), the
  transport is paused and the timer does not count.
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

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections or default_max_connections(),
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
        )


class _Handler(RequestHandler):
    """One connection, with the body-stall check and JSON parser errors."""

    def __init__(self, manager: _Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.header_timeout, **kwargs)
        self._limits = limits
        self._last_data = self._loop.time()
        self._stall_timer: asyncio.TimerHandle | None = None

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
        self._stall_timer = self._loop.call_later(self._limits.body_timeout, self._check_stall)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        super().data_received(data)

    def _check_stall(self) -> None:
        self._stall_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        request = self._current_request
        waited = self._loop.time() - self._last_data
        if (
            request is not None
            and not request.content.is_eof()
            and isinstance(transport, asyncio.ReadTransport)
            and transport.is_reading()
            and waited >= self._limits.body_timeout
        ):
            log.info("closing a connection whose request body stalled for %.0f s", waited)
            transport.close()
            return
        delay = max(1.0, self._limits.body_timeout - waited)
        self._stall_timer = self._loop.call_later(delay, self._check_stall)

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
        if len(self.connections) < self.limits.max_connections:
            return True
        idle = [
            (since, handler)
            for handler in self.connections
            if isinstance(handler, _Handler) and (since := handler.idle_since) is not None
        ]
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
