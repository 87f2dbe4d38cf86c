"""Agent authentication in the default ``required`` mode, end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloader.auth import signing_key
from edgeloader.auth.service import secret_hash
from edgeloader.auth.store import ApiKeyRecord, AuthStore
from edgeloader.auth.tokens import Tokens, token_hash
from edgeloader.errors import ConfigError
from tests.support.harness.net import serve
from tests.support.stack import ADMIN, FINGERPRINT, OPERATOR, Stack

JSON = dict[str, Any]


class Client:
    """The loader seen by an agent: JSON calls with an optional bearer token."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.stack.http.request(
            method, self.stack.loader_url + path, headers=headers, **kwargs
        ) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.read()
            return resp.status, body, resp

    async def login(self, creds: tuple[str, str] = ADMIN) -> JSON:
        status, body, _ = await self.call(
            "POST", "/api/auth/login", json={"email": creds[0], "password": creds[1]}
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def new_key(self, admin_token: str, role: str, validity: str = "1d") -> JSON:
        status, body, _ = await self.call(
            "POST",
            "/api/keys",
            admin_token,
            json={"name": f"{role} agent", "role": role, "validity": validity},
        )
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def exchange(self, api_key: str) -> tuple[int, Any]:
        status, body, _ = await self.call("POST", "/api/auth/token", json={"apiKey": api_key})
        return status, body


@pytest.fixture
async def client(stack: Stack) -> Client:
    await stack.start_loader(stack.settings(auth_mode="required"))
    return Client(stack)


def state_dir(stack: Stack) -> Path:
    return stack.tmp / "state"


def forged(stack: Stack, **ttl: float) -> Tokens:
    """Tokens signed with the loader's own key (read from its state folder)."""
    key = signing_key.load_or_create(state_dir(stack), FINGERPRINT)
    return Tokens(
        key,
        issuer="edgeloader",
        access_ttl=ttl.get("access", 900),
        refresh_ttl=ttl.get("refresh", 3600),
    )


async def test_login_returns_a_pair_with_the_upstream_role(client: Client) -> None:
    pair = await client.login(OPERATOR)
    assert set(pair) == {"accessToken", "refreshToken", "expiresIn", "role"}
    assert pair["role"] == "Operator"
    assert pair["expiresIn"] == 900
    claims = jwt.decode(pair["accessToken"], options={"verify_signature": False})
    assert claims["typ"] == "access"
    assert claims["sub"] == f"user:{OPERATOR[0]}"
    assert {"jti", "fam", "iat", "exp", "iss"} <= set(claims)


async def test_bad_login_is_401_and_never_says_whether_the_user_exists(client: Client) -> None:
    answers = []
    for email in (ADMIN[0], "nobody@example.org"):
        status, body, _ = await client.call(
            "POST", "/api/auth/login", json={"email": email, "password": "wrong"}
        )
        answers.append((status, body))
    assert answers[0] == answers[1] == (401, {"detail": "invalid email or password"})


async def test_tokens_verify_offline_with_the_published_keys(client: Client) -> None:
    pair = await client.login()
    status, jwks, _ = await client.call("GET", "/api/auth/keys.json")
    assert status == 200
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    key = jwt.PyJWK(jwk)
    claims = jwt.decode(pair["accessToken"], key, algorithms=["EdDSA"], issuer="edgeloader")
    assert claims["role"] == "Admin"


async def test_required_mode_protects_azaion_routes(client: Client, stack: Stack) -> None:
    assert (await client.call("GET", "/health"))[0] == 200
    for method, path in [
        ("GET", "/status"),
        ("POST", "/load/m.bin"),
        ("POST", "/upload/m.bin"),
        ("POST", "/unlock"),
        ("GET", "/unlock/status"),
        ("GET", "/api/keys"),
    ]:
        status, body, resp = await client.call(method, path)
        assert status == 401, (path, body)
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_compat_login_route_also_returns_a_pair(client: Client, stack: Stack) -> None:
    stack.publish("m.bin", b"agent data")
    status, body, _ = await client.call(
        "POST", "/login", json={"email": ADMIN[0], "password": ADMIN[1]}
    )
    assert status == 200
    assert body["status"] == "ok"
    token = body["accessToken"]
    status, data, _ = await client.call("POST", "/load/m.bin", token, json={"folder": stack.bucket})
    assert (status, data) == (200, b"agent data")


@pytest.mark.parametrize("case", ["expired", "bad signature", "alg none", "hs256", "refresh"])
async def test_bad_access_tokens_are_401(client: Client, stack: Stack, case: str) -> None:
    pair = await client.login()
    claims = jwt.decode(pair["accessToken"], options={"verify_signature": False})
    if case == "expired":
        token = forged(stack, access=-60).issue("user:x", "Admin").access_token
    elif case == "bad signature":
        token = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    elif case == "alg none":
        token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    elif case == "hs256":
        token = jwt.encode(claims, "a guessed shared secret, 32+ bytes", algorithm="HS256")
    else:
        token = pair["refreshToken"]
    status, body, _ = await client.call("GET", "/status", token)
    assert (status, body) == (401, {"detail": "invalid or expired token"})


async def test_refresh_rotates_and_reuse_revokes_the_family(client: Client) -> None:
    first = await client.login()
    status, second, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}
    )
    assert status == 200
    assert second["refreshToken"] != first["refreshToken"]
    assert second["accessToken"] != first["accessToken"]
    assert (await client.call("GET", "/status", second["accessToken"]))[0] == 200

    status, body, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}
    )
    assert status == 401
    assert "already used" in body["detail"]
    # The family is gone: the legitimate holder's newer token no longer works.
    status, _, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": second["refreshToken"]}
    )
    assert status == 401


async def test_logout_revokes_both_tokens(client: Client) -> None:
    pair = await client.login()
    status, _, _ = await client.call(
        "POST", "/api/auth/logout", pair["accessToken"], json={"refreshToken": pair["refreshToken"]}
    )
    assert status == 200
    assert (await client.call("GET", "/status", pair["accessToken"]))[0] == 401
    status, _, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": pair["refreshToken"]}
    )
    assert status == 401


async def test_logout_with_someone_elses_refresh_token_is_refused(client: Client) -> None:
    mine = await client.login(ADMIN)
    theirs = await client.login(OPERATOR)
    status, body, _ = await client.call(
        "POST",
        "/api/auth/logout",
        mine["accessToken"],
        json={"refreshToken": theirs["refreshToken"]},
    )
    assert status == 403
    assert "not yours" in body["detail"]
    ok, _, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": theirs["refreshToken"]}
    )
    assert ok == 200


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/load/absent.bin", {"json": {"folder": "models"}}),
    ("POST", "/upload/x.bin", {"data": b"not multipart"}),
    ("POST", "/unlock", {"json": {"email": "a@b", "password": "x"}}),
    ("GET", "/api/keys", {}),
    ("GET", "/api/audit", {}),
]
# What each role gets from each route: 403 is a denial; anything else means
# the guard let the call through (and the route then answered on its own).
ALLOWED = {
    "Operator": {"/load/absent.bin"},
    "Validator": {"/load/absent.bin"},
    "CompanionPC": {"/load/absent.bin", "/unlock"},
    "ResourceUploader": {"/load/absent.bin", "/upload/x.bin"},
    "ApiAdmin": {"/load/absent.bin", "/upload/x.bin", "/unlock", "/api/keys", "/api/audit"},
}


@pytest.mark.parametrize("role", list(ALLOWED))
async def test_roles_are_enforced_on_every_protected_route(client: Client, role: str) -> None:
    admin = await client.login()
    key = await client.new_key(admin["accessToken"], role)
    status, pair = await client.exchange(key["apiKey"])
    assert status == 200
    assert pair["role"] == role
    for method, path, kwargs in ROUTES:
        status, body, _ = await client.call(method, path, pair["accessToken"], **kwargs)
        if path in ALLOWED[role]:
            assert status != 403, (role, path, body)
        else:
            assert status == 403, (role, path, body)
            assert role in body["detail"]


async def test_api_key_is_shown_once_works_and_stops_after_revocation(client: Client) -> None:
    admin = (await client.login())["accessToken"]
    key = await client.new_key(admin, "Operator")
    assert key["apiKey"].startswith(f"elk_{key['id']}_")
    status, listing, _ = await client.call("GET", "/api/keys", admin)
    assert status == 200
    (listed,) = [k for k in listing["keys"] if k["id"] == key["id"]]
    assert "apiKey" not in listed
    assert key["apiKey"] not in str(listing)
    assert (await client.exchange(key["apiKey"]))[0] == 200
    status, _, _ = await client.call("DELETE", f"/api/keys/{key['id']}", admin)
    assert status == 200
    assert await client.exchange(key["apiKey"]) == (401, {"detail": "invalid API key"})


async def test_refresh_stops_working_when_the_api_key_is_revoked(client: Client) -> None:
    admin = (await client.login())["accessToken"]
    key = await client.new_key(admin, "Operator")
    _, pair = await client.exchange(key["apiKey"])
    await client.call("DELETE", f"/api/keys/{key['id']}", admin)
    status, _, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": pair["refreshToken"]}
    )
    assert status == 401


async def test_expired_api_key_is_refused(client: Client, stack: Stack) -> None:
    store = AuthStore(state_dir(stack))
    now = time.time()
    store.add_api_key(
        ApiKeyRecord.from_row(
            (
                "0123456789abcdef",
                "old",
                "Operator",
                secret_hash("s3cret"),
                now - 7200,
                now - 3600,
                None,
            )
        )
    )
    store.close()
    assert (await client.exchange("elk_0123456789abcdef_s3cret"))[0] == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "Superuser", "validity": "1d"},
        {"name": "x", "role": "Operator", "validity": "2d"},
        {"name": "", "role": "Operator", "validity": "1d"},
        {"name": "   ", "role": "Operator", "validity": "1d"},
        {"name": "x" * 101, "role": "Operator", "validity": "1d"},
        {"name": "bell\x07", "role": "Operator", "validity": "1d"},
        {"name": "two\nlines", "role": "Operator", "validity": "1d"},
        {"name": "<img src=x onerror=alert(1)>", "role": "Operator", "validity": "1d"},
        {"name": "a&b", "role": "Operator", "validity": "1d"},
    ],
)
async def test_bad_api_key_requests_are_422(client: Client, body: JSON) -> None:
    admin = (await client.login())["accessToken"]
    status, answer, _ = await client.call("POST", "/api/keys", admin, json=body)
    assert status == 422, answer


async def test_a_key_name_is_letters_digits_spaces_and_a_few_marks(client: Client) -> None:
    admin = (await client.login())["accessToken"]
    body = {"name": "CI runner: arm64 (Jetson Orin) — Київ-2", "role": "Operator", "validity": "1d"}
    status, answer, _ = await client.call("POST", "/api/keys", admin, json=body)
    assert status == 422  # the dash "—" is not among the allowed marks
    body["name"] = "CI runner: arm64 (Jetson Orin) Київ-2"
    status, answer, _ = await client.call("POST", "/api/keys", admin, json=body)
    assert status == 201, answer
    assert answer["name"] == body["name"]


async def test_repeated_failures_are_throttled_with_retry_after(client: Client) -> None:
    bad = {"email": ADMIN[0], "password": "wrong"}
    statuses = [(await client.call("POST", "/api/auth/login", json=bad))[0] for _ in range(5)]
    assert statuses == [401] * 5
    status, _, resp = await client.call("POST", "/api/auth/login", json=bad)
    assert status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    # The right password is refused too while the wait lasts.
    good = {"email": ADMIN[0], "password": ADMIN[1]}
    assert (await client.call("POST", "/api/auth/login", json=good))[0] == 429
    # Per address as well: another identity from the same address waits too.
    other = {"email": OPERATOR[0], "password": OPERATOR[1]}
    assert (await client.call("POST", "/api/auth/login", json=other))[0] == 429


async def test_api_key_guessing_is_throttled(client: Client) -> None:
    for _ in range(5):
        assert (await client.exchange("elk_0000000000000000_guess"))[0] == 401
    assert (await client.exchange("elk_0000000000000000_guess"))[0] == 429


async def test_the_database_holds_no_raw_secret(client: Client, stack: Stack) -> None:
    secrets_seen: list[str] = []
    pair = await client.login()
    secrets_seen += [pair["accessToken"], pair["refreshToken"]]
    key = await client.new_key(pair["accessToken"], "Operator")
    secrets_seen.append(key["apiKey"])
    secrets_seen.append(key["apiKey"].split("_", 2)[2])  # the secret part alone
    _, exchanged = await client.exchange(key["apiKey"])
    status, rotated, _ = await client.call(
        "POST", "/api/auth/refresh", json={"refreshToken": exchanged["refreshToken"]}
    )
    assert status == 200
    secrets_seen += [exchanged["refreshToken"], rotated["refreshToken"], rotated["accessToken"]]
    await client.call(
        "POST",
        "/api/auth/logout",
        rotated["accessToken"],
        json={"refreshToken": rotated["refreshToken"]},
    )
    stored = b"".join(p.read_bytes() for p in state_dir(stack).iterdir() if p.is_file())
    # The records are there, as hashes.
    assert token_hash(rotated["refreshToken"]).encode() in stored
    for secret in secrets_seen:
        assert secret.encode() not in stored
        # Nor any signature or payload segment of a token.
        for part in secret.split("."):
            if len(part) > 20:
                assert part.encode() not in stored
    assert ADMIN[1].encode() not in stored


async def test_signing_key_sealed_on_another_device_is_refused(stack: Stack) -> None:
    from edgeloader.web import create_app

    await stack.start_loader(stack.settings(auth_mode="required"))  # seals to FINGERPRINT
    app = create_app(stack.settings(auth_mode="required"), fingerprint="CPU: another device")
    with pytest.raises(ConfigError, match="sealed on another device"):
        await serve(app)
    sealed = state_dir(stack) / signing_key.KEY_FILE
    assert sealed.stat().st_mode & 0o777 == 0o600


async def test_audit_log_records_every_action(client: Client, stack: Stack) -> None:
    stack.publish("m.bin", b"audited bytes")
    await client.call("POST", "/api/auth/login", json={"email": ADMIN[0], "password": "wrong"})
    admin = await client.login()
    token = admin["accessToken"]
    await client.call("POST", "/login", json={"email": ADMIN[0], "password": ADMIN[1]})
    await client.call("POST", "/load/m.bin", token, json={"folder": stack.bucket})
    form = aiohttp.FormData()
    form.add_field("folder", stack.bucket)
    form.add_field("data", b"uploaded", filename="u")
    await client.call("POST", "/upload/u.bin", token, data=form)
    await client.call("POST", "/unlock", token, json={"email": ADMIN[0], "password": ADMIN[1]})
    key = await client.new_key(token, "Operator")
    await client.call("DELETE", f"/api/keys/{key['id']}", token)
    await client.call("POST", "/api/auth/refresh", json={"refreshToken": admin["refreshToken"]})
    await client.call("POST", "/api/auth/refresh", json={"refreshToken": admin["refreshToken"]})
    fresh = await client.login()
    await client.call(
        "POST",
        "/api/auth/logout",
        fresh["accessToken"],
        json={"refreshToken": fresh["refreshToken"]},
    )
    status, body, _ = await client.call(
        "GET", "/api/audit?limit=1000", (await client.login())["accessToken"]
    )
    assert status == 200
    entries = body["entries"]
    seen = {(e["action"], e["outcome"]) for e in entries}
    for expected in [
        ("login", "denied"),
        ("login", "ok"),
        ("load", "ok"),
        ("upload", "ok"),
        ("key-create", "ok"),
        ("key-revoke", "ok"),
        ("refresh", "ok"),
        ("refresh", "reuse-detected"),
        ("logout", "ok"),
    ]:
        assert expected in seen, expected
    assert any(e["action"] == "unlock" for e in entries)
    load = next(e for e in entries if e["action"] == "load")
    assert load["subject"] == f"user:{ADMIN[0]}"
    assert load["role"] == "Admin"
    assert load["resource"] == f"{stack.bucket}/m.bin"
    assert load["bytes"] == len(b"audited bytes")
    upload = next(e for e in entries if e["action"] == "upload")
    assert upload["bytes"] == len(b"uploaded")
    assert all(e["at"] > 0 and e["route"] for e in entries)


async def test_audit_query_is_validated(client: Client) -> None:
    token = (await client.login())["accessToken"]
    assert (await client.call("GET", "/api/audit?limit=0", token))[0] == 422
    assert (await client.call("GET", "/api/audit?since=yesterday", token))[0] == 422


async def test_compat_mode_keeps_azaion_routes_token_free_but_not_api_routes(
    stack: Stack,
) -> None:
    stack.publish("m.bin", b"compat")
    await stack.login()  # stack's default loader runs in compat mode
    assert await stack.load("m.bin") == (200, b"compat")
    async with stack.http.get(f"{stack.loader_url}/api/keys") as resp:
        assert resp.status == 401
    async with stack.http.post(
        f"{stack.loader_url}/login", json={"email": ADMIN[0], "password": ADMIN[1]}
    ) as resp:
        assert await resp.json() == {"status": "ok"}


async def test_concurrent_refresh_of_one_token_lets_one_through(client: Client) -> None:
    pair = await client.login()

    async def refresh() -> int:
        status, _, _ = await client.call(
            "POST", "/api/auth/refresh", json={"refreshToken": pair["refreshToken"]}
        )
        return status

    results = await asyncio.gather(*(refresh() for _ in range(5)))
    assert sorted(results) == [200, 401, 401, 401, 401]
