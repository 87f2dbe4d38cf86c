"""Loopback addresses, serving an aiohttp app, and waiting for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.05


class HarnessError(RuntimeError):
    """A component did not start or stopped early, or a wait ran out of time."""


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def dead_url() -> str:
    """An http URL on loopback where nothing listens."""
    return f"http://{LOOPBACK}:{free_port()}"


async def serve(
    app: web.Application, host: str = LOOPBACK, port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serves ``app`` on ``host`` (port 0: any free one); returns the runner,
    which the caller cleans up, and the URL."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    within: float = 60.0,
    *,
    failure: str = "condition not met in time",
) -> None:
    """Polls ``check`` until it is true; ``HarnessError(failure)`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise HarnessError(failure)
        await asyncio.sleep(POLL_SECONDS)


async def wait_http(
    url: str, within: float = 60.0, *, alive: Callable[[], None] | None = None
) -> None:
    """Until ``url`` answers at all (any status). ``alive`` is called before
    each try and raises when the server has died."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

        async def answers() -> bool:
            if alive is not None:
                alive()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(url):
                    return True
            return False

        await wait_for(answers, within, failure=f"{url} did not answer within {within:g}s")
