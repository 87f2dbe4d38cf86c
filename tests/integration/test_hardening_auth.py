"""Hardening of authentication, the device session, the audit and the logs
(issue 9: items 1, 2, 7, 10, 12, 13 and part of 17), on the real stack:
moto's S3, the reference Resource API and the loader over HTTP.

Source addresses rotate over 127.0.0.0/8, all loopback. Waits that could
expire during a test are set long (``first_wait``), so counts never depend
on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeloader.auth.audit import FIELD_MAX
from edgeloader.auth.store import DB_FILE, AuthStore
from edgeloader.auth.throttle import ENTRY_BYTES
from edgeloader.config import AuthLimits, Settings
from edgeloader.roles import Role
from tests.support.engines import EngineService, import_busybox_image, remove_image
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import wait_for
from tests.support.stack import ADMIN, OPERATOR, Stack, pattern

JSON = dict[str, Any]
#: Long enough that no wait runs out while a test runs.
LONG_WAIT = AuthLimits(first_wait=3600.0)
_hosts = itertools.count(2)


def fresh_address() -> str:
    """A loopback address no other request of this process used."""
    n = next(_hosts)
    return f"127.{n // 65536 % 256}.{n // 256 % 256}.{n % 256 or 1}"


class Loader:
    """The loader seen by clients from any loopback address."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        source: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            self._session(source) as http,
            http.request(method, self.stack.loader_url + path, headers=headers, **kwargs) as resp,
        ):
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    @contextlib.asynccontextmanager
    async def _session(self, source: str | None) -> AsyncIterator[aiohttp.ClientSession]:
        if source is None:
            yield self.stack.http
            return
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            yield http

    async def token(self, creds: tuple[str, str] = ADMIN) -> str:
        status, body = await self.call(
            "POST", "/api/auth/login", json=credentials(creds), source=fresh_address()
        )
        assert status == 200, body
        return str(body["accessToken"])

    async def key_token(self, admin: str, role: str) -> tuple[str, str]:
        """(key id, access token) of a new API key with ``role``."""
        status, key = await self.call(
            "POST", "/api/keys", admin, json={"name": "agent", "role": role, "validity": "1d"}
        )
        assert status == 201, key
        status, pair = await self.call("POST", "/api/auth/token", json={"apiKey": key["apiKey"]})
        assert status == 200, pair
        return str(key["id"]), str(pair["accessToken"])

    async def upload(self, token: str | None) -> int:
        """An upload's status: it posts the small part as the device's upstream
        user, which the Resource API allows only to uploaders (Admin here)."""
        form = aiohttp.FormData()
        form.add_field("folder", self.stack.bucket)
        form.add_field("data", b"probe", filename="probe.bin")
        return (await self.call("POST", "/upload/probe.bin", token, data=form))[0]

    async def unlock_finished(self, token: str | None = None) -> JSON:
        result: JSON = {}

        async def done() -> bool:
            status, body = await self.call("GET", "/unlock/status", token)
            assert status == 200, body
            result.update(body)
            return body["state"] in ("ready", "error")

        await wait_for(done, within=30)
        return result

    async def audit(self, admin: str) -> list[JSON]:
        status, body = await self.call("GET", "/api/audit?limit=1000", admin)
        assert status == 200, body
        return body["entries"]  # type: ignore[no-any-return]


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[Stack]]) -> Stack:
    """The real stack, with no loader yet: each test starts its own."""
    return await make_stack()


def credentials(creds: tuple[str, str]) -> JSON:
    return {"email": creds[0], "password": creds[1]}


def wrong(email: str = ADMIN[0]) -> JSON:
    return {"email": email, "password": "not-the-password"}


def settings(stack: Stack, mode: str = "required", **overrides: Any) -> Settings:
    """A loader with an archive to unlock but no engine (the unlock fails
    after its login, which is all these tests need of it)."""
    archive = stack.tmp / "images.enc"
    archive.write_bytes(os.urandom(4096))
    overrides.setdefault("docker_host", f"unix://{stack.tmp}/no-engine.sock")
    return stack.settings(auth_mode=mode, images_path=archive, **overrides)


async def loader(stack: Stack, mode: str = "required", **overrides: Any) -> Loader:
    await stack.start_loader(settings(stack, mode, **overrides))
    return Loader(stack)


# Item 1: /unlock is throttled and audited like a login, and does not change
# the device's upstream user unless the caller may.


async def test_unlock_guesses_are_throttled_and_audited_as_logins(stack: Stack) -> None:
    loader_ = await loader(stack, "compat", auth_limits=LONG_WAIT)
    attacker = fresh_address()
    answers = []
    for _ in range(8):
        status, _ = await loader_.call("POST", "/unlock", json=wrong(OPERATOR[0]), source=attacker)
        answers.append(status)
        if status == 200:
            assert (await loader_.unlock_finished())["error"] == "invalid email or password"
    assert answers == [200] * 5 + [429] * 3
    # The identity is blocked for every route that takes its password.
    status, _ = await loader_.call(
        "POST", "/api/auth/login", json=credentials(OPERATOR), source=fresh_address()
    )
    assert status == 429
    denied = [
        e
        for e in await loader_.audit(await loader_.token(ADMIN))
        if e["action"] == "login" and e["route"] == "POST /unlock"
    ]
    assert [(e["subject"], e["outcome"]) for e in denied] == [(f"user:{OPERATOR[0]}", "denied")] * 5


async def test_login_failures_count_against_unlock_too(stack: Stack) -> None:
    loader_ = await loader(stack, "compat", auth_limits=LONG_WAIT)
    for _ in range(5):
        status, _ = await loader_.call(
            "POST", "/api/auth/login", json=wrong(OPERATOR[0]), source=fresh_address()
        )
        assert status == 401
    status, _ = await loader_.call(
        "POST", "/unlock", json=credentials(OPERATOR), source=fresh_address()
    )
    assert status == 429


async def test_unlock_by_a_companion_pc_leaves_the_device_user_alone(stack: Stack) -> None:
    loader_ = await loader(stack)
    admin = await loader_.token(ADMIN)
    assert (await loader_.call("POST", "/login", json=credentials(ADMIN)))[0] == 200
    assert await loader_.upload(admin) == 200  # the device is the Admin upstream
    _, companion = await loader_.key_token(admin, Role.COMPANION_PC)
    status, body = await loader_.call("POST", "/unlock", companion, json=credentials(OPERATOR))
    assert (status, body) == (200, {"state": "authenticating"})
    final = await loader_.unlock_finished(companion)
    # It got past the login (to the missing engine) on a session of its own.
    assert final["state"] == "error"
    assert final["error"].startswith("container engine unreachable"), final
    assert await loader_.upload(admin) == 200  # still the Admin


async def test_unlock_by_an_admin_still_logs_the_device_in(stack: Stack) -> None:
    loader_ = await loader(stack)
    admin = await loader_.token(ADMIN)
    assert (await loader_.call("POST", "/login", json=credentials(ADMIN)))[0] == 200
    status, _ = await loader_.call("POST", "/unlock", admin, json=credentials(OPERATOR))
    assert status == 200
    await loader_.unlock_finished(admin)
    assert await loader_.upload(admin) == 502  # the device is now the Operator upstream


async def test_with_the_images_present_any_credentials_answer_ready(
    stack: Stack, engine: EngineService
) -> None:
    """The decision of docs/security.md: nothing is checked or unlocked then,
    so the answer tells a guesser nothing and costs no attempt."""
    ref = "localhost/edgeloader-hardening-ready:latest"
    import_busybox_image(engine, ref)
    try:
        loader_ = await loader(
            stack,
            "compat",
            api_services=(ref.rsplit(":", 1)[0],),
            docker_host=engine.docker_host,
            auth_limits=LONG_WAIT,
        )
        source = fresh_address()
        for _ in range(8):
            status, body = await loader_.call("POST", "/unlock", json=wrong(), source=source)
            assert (status, body) == (200, {"state": "ready"})
        status, _ = await loader_.call(
            "POST", "/api/auth/login", json=credentials(ADMIN), source=source
        )
        assert status == 200
    finally:
        remove_image(engine, ref)


# Item 2: the throttle holds under concurrency, junk traffic and address rotation.


@pytest.mark.parametrize("route", ["/api/auth/login", "/login", "/api/auth/token"])
async def test_concurrent_guesses_pass_five_at_most(stack: Stack, route: str) -> None:
    loader_ = await loader(stack, auth_limits=LONG_WAIT)
    body = {"apiKey": "elk_0123456789abcdef_guess"} if route.endswith("token") else wrong()
    source = fresh_address()
    answers = await asyncio.gather(
        *(loader_.call("POST", route, json=body, source=source) for _ in range(60))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [401] * 5 + [429] * 55


@pytest.mark.parametrize("route", ["/api/auth/login", "/login", "/api/auth/token"])
async def test_rotating_addresses_share_the_identity_count(stack: Stack, route: str) -> None:
    loader_ = await loader(stack, auth_limits=LONG_WAIT)
    body = {"apiKey": "elk_0123456789abcdef_guess"} if route.endswith("token") else wrong()
    answers = await asyncio.gather(
        *(loader_.call("POST", route, json=body, source=fresh_address()) for _ in range(30))
    )
    assert sorted(status for status, _ in answers) == [401] * 5 + [429] * 25
    if route != "/api/auth/token":
        status, _ = await loader_.call(
            "POST", route, json=credentials(ADMIN), source=fresh_address()
        )
        assert status == 429


async def test_rotating_addresses_share_the_identity_count_on_unlock(stack: Stack) -> None:
    loader_ = await loader(stack, "compat", auth_limits=LONG_WAIT)
    answers = []
    for _ in range(7):
        status, _ = await loader_.call(
            "POST", "/unlock", json=wrong(OPERATOR[0]), source=fresh_address()
        )
        answers.append(status)
        if status == 200:
            await loader_.unlock_finished()
    assert answers == [200] * 5 + [429] * 2


async def test_junk_traffic_cannot_unblock_an_identity(stack: Stack) -> None:
    """The table holds 40 entries here; a junk failure needs two (its
    address and its identity). When it is full, new keys wait, old ones stay."""
    limits = AuthLimits(first_wait=3600.0, throttle_max_bytes=40 * ENTRY_BYTES)
    loader_ = await loader(stack, auth_limits=limits)
    victim = fresh_address()
    for _ in range(5):
        assert (await loader_.call("POST", "/api/auth/login", json=wrong(), source=victim))[
            0
        ] == 401
    junk = [
        (await loader_.call("POST", "/api/auth/login", json=wrong(f"junk{n}@x"), source=a))[0]
        for n, a in enumerate(fresh_address() for _ in range(40))
    ]
    assert set(junk) == {401, 429}
    assert junk.index(429) == 19  # 2 + 19 * 2 entries fill the table
    status, _ = await loader_.call(
        "POST", "/api/auth/login", json=credentials(ADMIN), source=fresh_address()
    )
    assert status == 429


# Item 7: a POST /login changes the device's upstream user only for an admin,
# and a load in flight finishes on the session it started with.


async def test_anonymous_login_cannot_change_the_device_user(stack: Stack) -> None:
    loader_ = await loader(stack)
    assert (await loader_.call("POST", "/login", json=credentials(ADMIN)))[0] == 200
    admin = await loader_.token(ADMIN)
    status, body = await loader_.call("POST", "/login", json=credentials(OPERATOR))
    assert status == 403
    assert "Admin or ApiAdmin" in body["detail"]
    operator = await loader_.token(OPERATOR)
    assert (await loader_.call("POST", "/login", operator, json=credentials(OPERATOR)))[0] == 403
    assert await loader_.upload(admin) == 200  # still the Admin upstream
    # An admin's token may change it; then the user itself may log in again.
    assert (await loader_.call("POST", "/login", admin, json=credentials(OPERATOR)))[0] == 200
    assert await loader_.upload(admin) == 502
    assert (await loader_.call("POST", "/login", json=credentials(OPERATOR)))[0] == 200
    audit = await loader_.audit(admin)
    assert any(e["outcome"] == "forbidden" and e["route"] == "POST /login" for e in audit)


async def test_an_invalid_token_on_login_is_refused(stack: Stack) -> None:
    loader_ = await loader(stack)
    status, _ = await loader_.call("POST", "/login", "not-a-token", json=credentials(ADMIN))
    assert status == 401


async def test_a_load_in_flight_finishes_when_the_device_user_changes(stack: Stack) -> None:
    loader_ = await loader(stack)
    data = pattern(40 * 1024 * 1024)
    stack.publish("big.bin", data)
    assert (await loader_.call("POST", "/login", json=credentials(ADMIN)))[0] == 200
    admin = await loader_.token(ADMIN)
    async with stack.http.post(
        f"{stack.loader_url}/load/big.bin",
        json={"folder": stack.bucket},
        headers={"Authorization": f"Bearer {admin}"},
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(1 << 20)
        status, _ = await loader_.call("POST", "/login", admin, json=credentials(OPERATOR))
        assert status == 200
        rest = await resp.read()
    assert first + rest == data
    # New loads run on the new user's session.
    status, body = await loader_.call("POST", "/load/big.bin", admin, json={"folder": stack.bucket})
    assert (status, body == data) == (200, True)


# Item 10: identities are capped; the audit is bounded by bytes.


async def test_overlong_identities_never_reach_the_store(stack: Stack) -> None:
    loader_ = await loader(stack, "compat")
    huge = "a" * 60_000 + "@example.org"
    for route in ("/api/auth/login", "/login", "/unlock"):
        for _ in range(20):
            status, body = await loader_.call(
                "POST", route, json={"email": huge, "password": "x"}, source=fresh_address()
            )
            assert status == 422, body
    for _ in range(20):
        status, _ = await loader_.call(
            "POST", "/api/auth/token", json={"apiKey": f"elk_{huge}_x"}, source=fresh_address()
        )
        assert status in (401, 429)  # malformed keys share one count
    entries = await loader_.audit(await loader_.token(ADMIN))
    assert all(len(v) <= FIELD_MAX for e in entries for v in e.values() if isinstance(v, str))
    stored = b"".join(p.read_bytes() for p in (stack.tmp / "state").iterdir() if p.is_file())
    assert b"a" * 1000 not in stored


async def test_the_audit_stays_under_its_byte_limit(stack: Stack) -> None:
    loader_ = await loader(stack, auth_limits=AuthLimits(audit_max_bytes=8 * 1024))
    admin = await loader_.token(ADMIN)
    status, key = await loader_.call(
        "POST", "/api/keys", admin, json={"name": "agent", "role": "Operator", "validity": "1d"}
    )
    assert status == 201
    for _ in range(150):
        assert (await loader_.call("POST", "/api/auth/token", json={"apiKey": key["apiKey"]}))[
            0
        ] == 200
    store = AuthStore(stack.tmp / "state")
    try:
        assert store.audit_bytes() <= 8 * 1024
        entries = store.audit(limit=1000)
    finally:
        store.close()
    assert entries[-1].action == "token"
    assert entries[0].action != "login"  # the oldest went first
    assert len(entries) < 150


# Item 12 and item 17 (access log): text logs, from `edgeloader serve` itself.


async def test_logs_cannot_be_forged_and_keep_no_query_token(stack: Stack, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as cleanup:
        child, url = await start_loader_process(
            stack.api_url, tmp_path / "proc-state", logs, cleanup, log_level="INFO"
        )
        forged = "edgeloader.audit: audit login POST /api/auth/login by user:admin@example.org: ok"
        email = f"x@example.org\n2030-01-01 00:00:00,000 INFO    {forged}"
        async with stack.http.post(
            f"{url}/api/auth/login", json={"email": email, "password": "x"}
        ) as resp:
            assert resp.status == 401
        secret = "eyJsecret.token.value"
        async with stack.http.get(f"{url}/status?access_token={secret}&x=1") as resp:
            assert resp.status == 401
        async with stack.http.get(f"{url}/health") as resp:
            assert resp.status == 200
        child.stop()
        text = child.log_path.read_text()
    lines = text.splitlines()
    assert not any(line.startswith("2030-01-01") for line in lines)
    assert any("x@example.org\\n2030-01-01" in line for line in lines)
    assert secret not in text
    assert "access_token=[redacted]" in text


# Item 13: the state folder and the database files are private.


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def test_state_folder_and_database_files_are_private(stack: Stack) -> None:
    state = stack.tmp / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    with umask(0o022):
        loader_ = await loader(stack)
        await loader_.token(ADMIN)  # writes to the WAL
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
            path = state / name
            assert path.exists(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


# Item 17: access tokens end with their refresh family or API key.


async def test_access_tokens_end_with_their_family(stack: Stack) -> None:
    loader_ = await loader(stack)
    status, first = await loader_.call(
        "POST", "/api/auth/login", json=credentials(OPERATOR), source=fresh_address()
    )
    assert status == 200
    status, second = await loader_.call(
        "POST", "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}
    )
    assert status == 200
    assert (await loader_.call("GET", "/status", first["accessToken"]))[0] == 200
    # A thief replays the used refresh token: the family is revoked...
    status, _ = await loader_.call(
        "POST", "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}
    )
    assert status == 401
    # ...and with it every access token it issued, not only at the next refresh.
    for pair in (first, second):
        assert (await loader_.call("GET", "/status", pair["accessToken"]))[0] == 401


async def test_access_tokens_end_at_logout_of_their_family(stack: Stack) -> None:
    loader_ = await loader(stack)
    status, first = await loader_.call(
        "POST", "/api/auth/login", json=credentials(OPERATOR), source=fresh_address()
    )
    assert status == 200
    status, second = await loader_.call(
        "POST", "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}
    )
    assert status == 200
    status, _ = await loader_.call(
        "POST",
        "/api/auth/logout",
        second["accessToken"],
        json={"refreshToken": second["refreshToken"]},
    )
    assert status == 200
    assert (await loader_.call("GET", "/status", first["accessToken"]))[0] == 401


async def test_access_tokens_end_with_their_api_key(stack: Stack) -> None:
    loader_ = await loader(stack)
    admin = await loader_.token(ADMIN)
    key_id, token = await loader_.key_token(admin, Role.OPERATOR)
    assert (await loader_.call("GET", "/status", token))[0] == 200
    assert (await loader_.call("DELETE", f"/api/keys/{key_id}", admin))[0] == 200
    assert (await loader_.call("GET", "/status", token))[0] == 401
