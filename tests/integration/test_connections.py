"""Connections on the real loader: the cap under idle sockets, header and
body timeouts, and a slow reader of a long answer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.harness.net import free_port, wait_http
from tests.support.harness.processes import clean_env
from tests.support.stack import Stack, pattern

# -- connections: caps and timeouts ----------------------------------------------------


@contextlib.asynccontextmanager
async def limited(stack: Stack, **settings: str) -> AsyncIterator[str]:
    """``edgeloader serve`` as its own process at systemd's default of 1024
    descriptors, with 2-second header and body timeouts unless ``settings``
    say otherwise."""
    port = free_port()
    env = clean_env(
        RESOURCE_API_URL=stack.api_url,
        EDGELOADER_STATE_DIR=str(stack.tmp / f"limited-state-{port}"),
        EDGELOADER_AUTH="compat",
        **({"EDGELOADER_HEADER_TIMEOUT": "2", "EDGELOADER_BODY_TIMEOUT": "2"} | settings),
    )
    process = await asyncio.create_subprocess_exec(
        *["prlimit", "--nofile=1024:1024", sys.executable, "-m", "edgeloader", "serve"],
        *["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{url}/health")
        yield url
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


@pytest.fixture
async def limited_loader(stack: Stack) -> AsyncIterator[str]:
    async with limited(stack) as url:
        yield url


async def closed_by_server(reader: asyncio.StreamReader, within: float = 30.0) -> bool:
    """True when the server closes the connection (EOF) within ``within`` s."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except (TimeoutError, ConnectionError):
        return False
    return True


async def test_idle_sockets_cannot_starve_the_service(limited_loader: str) -> None:
    host, port = limited_loader.removeprefix("http://").split(":")
    sockets = []
    for _ in range(1100):  # more than the service's descriptors
        sockets.append(await asyncio.open_connection(host, int(port)))
    try:
        timeout = aiohttp.ClientTimeout(total=20)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{limited_loader}/health") as resp,
        ):
            assert resp.status == 200
    finally:
        for _, writer in sockets:
            writer.close()


async def test_slow_headers_and_stalled_bodies_are_closed(limited_loader: str) -> None:
    host, port = limited_loader.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()

    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"email": '
    )
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()


async def test_a_burst_of_connections_stays_under_the_cap(stack: Stack) -> None:
    async with limited(stack, EDGELOADER_MAX_CONNECTIONS="100") as url:
        host, port = url.removeprefix("http://").split(":")
        sockets = [await asyncio.open_connection(host, int(port)) for _ in range(600)]
        try:
            await asyncio.sleep(1.0)  # the loader's closes arrive
            still_open = 0
            for reader, _ in sockets:
                try:
                    await asyncio.wait_for(reader.read(1), 0.01)  # EOF: closed
                except TimeoutError:
                    still_open += 1
            assert still_open <= 100, f"{still_open} connections are open"
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(f"{url}/health") as resp,
            ):
                assert resp.status == 200
        finally:
            for _, writer in sockets:
                writer.close()


LOGIN_HEAD = (
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


async def send_slowly(url: str, body: bytes, piece: int, every: float) -> bytes:
    """Sends a login body ``piece`` bytes every ``every`` seconds; returns
    what the loader answered (b"" if it closed the connection first)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(LOGIN_HEAD % len(body))
        for start in range(0, len(body), piece):
            writer.write(body[start : start + piece])
            try:
                await writer.drain()
            except ConnectionError:
                return b""
            await asyncio.sleep(every)
            if reader.at_eof():
                return b""
        return await asyncio.wait_for(reader.read(65536), 30)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_a_body_below_the_minimum_rate_is_cut_and_a_slow_upload_finishes(
    stack: Stack,
) -> None:
    # 1 KiB/s over a 3-second window: 16 bytes every 0.5 s (32 B/s) is cut
    # although a byte arrives well within every stall timeout; 1.5 KiB
    # every 0.25 s (6 KiB/s, a poor link, with room for this process's own
    # pauses) is read to the end, for 8 s.
    body = b'{"email": "nobody@example.com", "password": "wrong"' + b" " * 48_000 + b"}"
    settings = {"EDGELOADER_BODY_MIN_RATE": "1024", "EDGELOADER_BODY_TIMEOUT": "3"}
    async with limited(stack, **settings) as url:
        trickle, upload = await asyncio.gather(
            send_slowly(url, body[:2000], 16, 0.5), send_slowly(url, body, 1536, 0.25)
        )
    assert trickle == b""
    assert upload.startswith(b"HTTP/1.1 401"), upload[:200]


async def test_a_slow_reader_of_a_long_answer_is_never_cut(
    stack: Stack, limited_loader: str
) -> None:
    data = pattern(24 * 1024 * 1024)
    stack.publish("m.bin", data)
    await stack.login(url=limited_loader)
    received = bytearray()
    async with aiohttp.ClientSession(read_bufsize=1 << 16) as http:
        url = f"{limited_loader}/load/m.bin"
        async with http.post(url, json={"folder": stack.bucket}) as resp:
            assert resp.status == 200
            received += await resp.content.readexactly(1 << 20)
            await asyncio.sleep(5)  # longer than both timeouts, reading nothing
            received += await resp.content.read()
    assert bytes(received) == data
