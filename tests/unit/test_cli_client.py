"""The CLI's HTTP session against a small fake service: tokens refreshed
before use and after a 401, rotation, one refresh for concurrent commands,
ended sessions, and one-line errors."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeloader.cli.client import (
    ApiError,
    ApiUsageError,
    Client,
    ServiceUnreachable,
    SessionEnded,
)
from edgeloader.cli.credentials import CredentialStore, SavedTokens
from edgeloader.cli.output import UsageError
from tests.support.harness.net import dead_url, serve


@dataclass
class FakeService:
    """Rotating refresh tokens and access tokens checked on every use."""

    access: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)
    refreshes: int = 0
    url: str = ""

    def issue(self) -> dict[str, Any]:
        access, refresh = secrets.token_hex(8), secrets.token_hex(8)
        self.access.add(access)
        self.refresh.add(refresh)
        return {"accessToken": access, "refreshToken": refresh, "expiresIn": 900, "role": "Admin"}

    def app(self) -> web.Application:
        async def do_refresh(request: web.Request) -> web.Response:
            token = (await request.json())["refreshToken"]
            await asyncio.sleep(0.05)  # wide enough for a race to show
            if token not in self.refresh:
                return web.json_response({"detail": "invalid or expired token"}, status=401)
            self.refresh.discard(token)
            self.refreshes += 1
            return web.json_response(self.issue())

        async def thing(request: web.Request) -> web.Response:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in self.access:
                return web.json_response({"detail": "invalid or expired token"}, status=401)
            return web.json_response({"ok": True})

        async def device(request: web.Request) -> web.Response:
            return web.json_response({"detail": "not logged in: POST /login first"}, status=401)

        async def invalid(request: web.Request) -> web.Response:
            return web.json_response({"detail": "limit must be 1-1000"}, status=422)

        app = web.Application()
        app.router.add_post("/api/auth/refresh", do_refresh)
        app.router.add_get("/thing", thing)
        app.router.add_get("/device", device)
        app.router.add_get("/invalid", invalid)
        return app


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    fake = FakeService()
    runner, fake.url = await serve(fake.app())
    yield fake
    await runner.cleanup()


def stored(store: CredentialStore, url: str, answer: dict[str, Any], expires_at: float) -> None:
    with store.locked():
        store.put(
            url,
            SavedTokens(
                answer["accessToken"], answer["refreshToken"], expires_at, "Admin", "a@b.c"
            ),
        )


async def test_a_valid_token_is_used_as_is(service: FakeService, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    stored(store, service.url, service.issue(), 2e9)
    async with Client(service.url, store) as client:
        assert await client.call("GET", "/thing") == {"ok": True}
    assert service.refreshes == 0


async def test_an_expired_token_is_refreshed_before_use(
    service: FakeService, tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path)
    first = service.issue()
    stored(store, service.url, first, 1.0)
    async with Client(service.url, store) as client:
        assert await client.call("GET", "/thing") == {"ok": True}
    assert service.refreshes == 1
    fresh = store.get(service.url)
    assert fresh is not None
    assert fresh.refresh_token != first["refreshToken"]
    assert fresh.user == "a@b.c"
    assert not fresh.expired()


async def test_a_refused_token_is_refreshed_once_and_sent_again(
    service: FakeService, tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path)
    answer = service.issue()
    service.access.clear()  # revoked on the service's side
    stored(store, service.url, answer, 2e9)
    async with Client(service.url, store) as client:
        assert await client.call("GET", "/thing") == {"ok": True}
    assert service.refreshes == 1


async def test_a_refused_refresh_ends_the_session(service: FakeService, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    answer = service.issue()
    service.access.clear()
    service.refresh.clear()
    stored(store, service.url, answer, 2e9)
    async with Client(service.url, store) as client:
        with pytest.raises(SessionEnded, match=r"has ended .*run `edgeloader login` again"):
            await client.call("GET", "/thing")
    assert store.get(service.url) is None


async def test_a_pair_refreshed_by_another_command_is_taken(
    service: FakeService, tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path)
    stale = service.issue()
    newer = service.issue()
    stored(store, service.url, newer, 2e9)
    stale_pair = SavedTokens(stale["accessToken"], stale["refreshToken"], 1.0)
    async with Client(service.url, store) as client:
        got = await client.refresh(stale_pair)
    assert got.access_token == newer["accessToken"]
    assert service.refreshes == 0
    assert stale["refreshToken"] in service.refresh  # never presented


async def test_concurrent_commands_refresh_once(service: FakeService, tmp_path: Path) -> None:
    stored(CredentialStore(tmp_path), service.url, service.issue(), 1.0)

    async def command() -> Any:
        async with Client(service.url, CredentialStore(tmp_path)) as client:
            return await client.call("GET", "/thing")

    assert await asyncio.gather(*(command() for _ in range(4))) == [{"ok": True}] * 4
    assert service.refreshes == 1


async def test_the_device_not_logged_in_is_not_a_token_problem(
    service: FakeService, tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path)
    stored(store, service.url, service.issue(), 2e9)
    async with Client(service.url, store) as client:
        with pytest.raises(ApiError, match="run `edgeloader login --device`"):
            await client.call("GET", "/device")
    assert service.refreshes == 0


async def test_no_pair_and_a_401_says_to_log_in(service: FakeService, tmp_path: Path) -> None:
    async with Client(service.url, CredentialStore(tmp_path)) as client:
        with pytest.raises(SessionEnded, match=r"not logged in to .*: run `edgeloader login`"):
            await client.call("GET", "/thing")


async def test_a_refused_request_is_bad_usage(service: FakeService, tmp_path: Path) -> None:
    async with Client(service.url, CredentialStore(tmp_path)) as client:
        with pytest.raises(ApiUsageError) as caught:
            await client.call("GET", "/invalid")
    assert caught.value.detail == "limit must be 1-1000 (HTTP 422)"
    assert isinstance(caught.value, UsageError)  # exit 2, as any bad usage


async def test_a_service_that_is_down(tmp_path: Path) -> None:
    url = dead_url()
    async with Client(url, CredentialStore(tmp_path)) as client:
        with pytest.raises(ServiceUnreachable) as caught:
            await client.call("GET", "/health")
    assert caught.value.detail == (
        f"cannot reach the service at {url}: Connection refused; start it with "
        "`edgeloader serve` (`make run` in a checkout), or point --url or $EDGELOADER_URL at it"
    )
