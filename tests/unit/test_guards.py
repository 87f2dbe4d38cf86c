"""The route guards on a real app, with tokens from its own signer: who may
call what, decided by the marks on the handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgeloader.config import Settings
from edgeloader.roles import ADMINS, Role
from edgeloader.web import create_app
from edgeloader.web.guards import PUBLIC_PATHS, audited, azaion, roles
from edgeloader.web.state import SERVICES

Client = Callable[[str], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(mode: str) -> TestClient[web.Request, web.Application]:
        settings = Settings.from_env(
            {
                "RESOURCE_API_URL": "http://127.0.0.1:9",
                "EDGELOADER_STATE_DIR": str(tmp_path / mode),
                "EDGELOADER_AUTH": mode,
            }
        )
        app = create_app(settings, fingerprint="CPU: guard test")
        test_client = TestClient(TestServer(app))
        await test_client.start_server()
        clients.append(test_client)
        return test_client

    yield make
    for c in clients:
        await c.close()


def bearer(test_client: TestClient[web.Request, web.Application], role: str) -> dict[str, str]:
    pair = test_client.app[SERVICES].auth.tokens.issue(f"user:{role}", role)
    return {"Authorization": f"Bearer {pair.access_token}"}


async def test_required_mode_checks_token_and_role(client: Client) -> None:
    c = await client("required")
    resp = await c.get("/api/keys")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await c.get("/api/keys", headers=bearer(c, Role.OPERATOR))
    assert resp.status == 403
    assert "allowed: Admin, ApiAdmin" in (await resp.json())["detail"]
    for role in ADMINS:
        resp = await c.get("/api/keys", headers=bearer(c, role))
        assert resp.status == 200, role
    # An Azaion route needs a token too in this mode.
    assert (await c.get("/status")).status == 401
    assert (await c.get("/status", headers=bearer(c, Role.OPERATOR))).status == 200


async def test_compat_mode_opens_only_the_azaion_routes(client: Client) -> None:
    c = await client("compat")
    assert (await c.get("/status")).status == 200
    assert (await c.get("/api/keys")).status == 401


async def test_public_paths_need_nothing(client: Client) -> None:
    c = await client("required")
    assert (await c.get("/health")).status == 200
    assert (await c.get("/api/auth/keys.json")).status == 200
    assert "/health" in PUBLIC_PATHS
    assert "/status" not in PUBLIC_PATHS


def test_marks_are_plain_attributes() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    marked = audited("load")(roles(*ADMINS)(azaion(handler)))
    assert marked.__dict__["edgeloader_roles"] == frozenset(ADMINS)
    assert marked.__dict__["edgeloader_audit"] == "load"
    assert marked.__dict__["edgeloader_azaion"] is True
