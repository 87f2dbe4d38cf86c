"""The reference Resource API, run for real on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from yarl import URL

from edgeloader import _core, crypto
from edgeloader.roles import Role
from edgeloader_publisher.resource_api import ResourceApiConfig, create_resource_api_app
from edgeloader_publisher.resource_api.server import KEY_FRAGMENT_FILE, RESOURCES_DIR, USERS_FILE
from tests.support.harness.net import free_port
from tests.support.harness.resource_api import User, serve_resource_api, write_users

SECRET = "test-secret-" + "x" * 32
OPERATOR = "operator@example.com"
UPLOADER = "uploader@example.com"
PASSWORD = "correct horse battery staple"
UPLOADER_PASSWORD = "uploader pass"
HARDWARE = "CPU: Test CPU. GPU: unknown. Memory: 16 GiB. DriveSerial: unknown"
MAX_UPLOAD = 300_000


# -- fixtures ---------------------------------------------------------------------------


@dataclass
class Api:
    session: aiohttp.ClientSession
    data_dir: Path

    async def login(self, email: str = OPERATOR, password: str = PASSWORD) -> str:
        async with self.session.post("/login", json={"email": email, "password": password}) as r:
            assert r.status == 200
            body = await r.json()
        token = body["token"]
        assert isinstance(token, str)
        return token

    def put(self, folder: str, name: str, data: bytes) -> None:
        directory = self.data_dir / RESOURCES_DIR / folder
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_token(role: str, *, secret: str = SECRET, exp_delta: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "nameid": "1",
        "unique_name": OPERATOR,
        "role": role,
        "iat": now,
        "exp": now + exp_delta,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A populated user database, made once: scrypt is slow on purpose."""
    directory = tmp_path_factory.mktemp("users")
    users = [User(OPERATOR, PASSWORD, Role.OPERATOR)]
    users += [User(UPLOADER, UPLOADER_PASSWORD, Role.RESOURCE_UPLOADER)]
    write_users(directory, users)
    return (directory / USERS_FILE).read_bytes()


@pytest.fixture
def data_dir(tmp_path: Path, users_db: bytes) -> Path:
    directory = tmp_path / "api"
    directory.mkdir()
    (directory / USERS_FILE).write_bytes(users_db)
    return directory


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    config = ResourceApiConfig(data_dir=data_dir, jwt_secret=SECRET, max_upload_bytes=MAX_UPLOAD)
    runner, url = await serve_resource_api(config)
    try:
        async with aiohttp.ClientSession(url) as session:
            yield Api(session=session, data_dir=data_dir)
    finally:
        await runner.cleanup()


# -- an independent implementation of docs/protocol.md as the oracle --------------------------


def oracle_api_key(email: str, password: str, hardware: str) -> bytes:
    def hash_b64(s: str) -> str:
        return base64.b64encode(hashlib.sha384(s.encode()).digest()).decode()

    hw_hash = hash_b64("Azaion_" + hardware + "_%$$$)0_")
    key_str = hash_b64(email + "-" + password + "-" + hw_hash + "-#%@AzaionKey@%#---")
    return hashlib.sha256(key_str.encode()).digest()


def oracle_decrypt_v1(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


# -- login and tokens -------------------------------------------------------------------


async def test_login_issues_token_with_claims(api: Api) -> None:
    token = await api.login()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["unique_name"] == OPERATOR
    assert claims["role"] == "Operator"
    assert isinstance(claims["nameid"], str)
    assert int(claims["nameid"]) > 0
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60


async def test_bad_credentials_get_the_same_401(api: Api) -> None:
    answers = []
    for email, password in [(OPERATOR, "wrong"), ("nobody@example.com", PASSWORD)]:
        async with api.session.post("/login", json={"email": email, "password": password}) as r:
            assert r.status == 401
            answers.append(await r.json())
    assert answers[0] == answers[1]
    assert set(answers[0]) == {"detail"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"email": "a@b"}',
        b'{"email": 1, "password": "x"}',
        b'{"email": "a@b", "password": null}',
    ],
)
async def test_login_malformed_body_is_400(api: Api, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with api.session.post("/login", data=body, headers=headers) as r:
        assert r.status == 400
        assert "detail" in await r.json()


PROTECTED = [
    ("POST", "/resources/get/models"),
    ("POST", "/resources/get/"),
    ("POST", "/resources/models"),
    ("GET", "/resources/list/models"),
    ("GET", "/binary-split/key-fragment"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
        "expired",
        "wrong-secret",
        "no-claims",
    ],
)
async def test_protected_routes_need_a_valid_token(
    api: Api, method: str, path: str, authorization: str | None
) -> None:
    if authorization == "expired":
        authorization = f"Bearer {make_token('Admin', exp_delta=-10)}"
    elif authorization == "wrong-secret":
        authorization = f"Bearer {make_token('Admin', secret='y' * 40)}"
    elif authorization == "no-claims":
        token = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        authorization = f"Bearer {token}"
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api.session.request(method, path, headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "detail" in await r.json()


def test_every_route_but_login_is_covered() -> None:
    app = create_resource_api_app(ResourceApiConfig(data_dir=Path("unused"), jwt_secret=SECRET))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    expected = {(m, p.replace("models", "{folder}")) for m, p in PROTECTED}
    assert routes == expected | {("POST", "/login")}


async def test_token_lifetime_is_configurable(data_dir: Path) -> None:
    config = ResourceApiConfig(data_dir=data_dir, jwt_secret=SECRET, token_lifetime=90)
    runner, url = await serve_resource_api(config)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/login", json={"email": OPERATOR, "password": PASSWORD}) as r,
        ):
            token = (await r.json())["token"]
    finally:
        await runner.cleanup()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 90


# -- serving resources ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


async def get_resource(
    api: Api, token: str, folder: str, file_name: str, password: str = PASSWORD
) -> Answer:
    body = {"password": password, "hardware": HARDWARE, "fileName": file_name}
    async with api.session.post(f"/resources/get/{folder}", json=body, headers=bearer(token)) as r:
        return Answer(r.status, r.content_type, await r.read())


async def test_get_resource_matches_the_oracle(api: Api) -> None:
    part = os.urandom(3000)
    api.put("models", "yolo.small", part)
    token = await api.login()
    r = await get_resource(api, token, "models", "yolo.small")
    assert r.status == 200
    assert r.content_type == "application/octet-stream"
    data = r.body
    assert len(data) == 16 + 3008
    assert oracle_decrypt_v1(oracle_api_key(OPERATOR, PASSWORD, HARDWARE), data) == part


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 3072, 600_000])
async def test_get_resource_round_trips_any_size(api: Api, size: int) -> None:
    part = os.urandom(size)
    api.put("models", "m.small", part)
    token = await api.login()
    r = await get_resource(api, token, "models", "m.small")
    assert r.status == 200
    data = r.body
    assert len(data) == _core.BLOCK_SIZE + _core.v1_padded_length(size)
    assert crypto.decrypt_v1(crypto.api_key(OPERATOR, PASSWORD, HARDWARE), data) == part


async def test_each_answer_has_a_fresh_iv(api: Api) -> None:
    api.put("models", "m.small", b"same bytes")
    token = await api.login()
    first = (await get_resource(api, token, "models", "m.small")).body
    second = (await get_resource(api, token, "models", "m.small")).body
    assert first[:16] != second[:16]


@pytest.mark.parametrize("password", ["wrong", UPLOADER_PASSWORD])
async def test_get_resource_with_another_password_is_401(api: Api, password: str) -> None:
    api.put("models", "m.small", b"part")
    token = await api.login()
    r = await get_resource(api, token, "models", "m.small", password=password)
    assert r.status == 401


@pytest.mark.parametrize(("folder", "name"), [("models", "absent.small"), ("nofolder", "a.small")])
async def test_get_missing_resource_is_404(api: Api, folder: str, name: str) -> None:
    api.put("models", "present.small", b"part")
    token = await api.login()
    r = await get_resource(api, token, folder, name)
    assert r.status == 404


async def test_missing_resource_is_401_before_404_with_a_bad_password(api: Api) -> None:
    token = await api.login()
    r = await get_resource(api, token, "models", "absent.small", password="wrong")
    assert r.status == 401


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../users.sqlite3",
        "a/b",
        "a\\b",
        "a\x00b",
        "/etc/passwd",
        "x" * 256,
        "é" * 128,
    ],
)
async def test_unsafe_file_names_are_400(api: Api, name: str) -> None:
    token = await api.login()
    r = await get_resource(api, token, "models", name)
    assert r.status == 400


@pytest.mark.parametrize("folder", ["%2E%2E", "..%2F..", "a%2Fb", "a%5Cb", "a%00b", ".git"])
async def test_unsafe_folders_are_400(api: Api, folder: str) -> None:
    # Encoded, because the client resolves a literal ".." segment itself.
    token = await api.login()
    headers = bearer(token)
    body = {"password": PASSWORD, "hardware": HARDWARE, "fileName": USERS_FILE}
    get_url = URL(f"/resources/get/{folder}", encoded=True)
    async with api.session.post(get_url, json=body, headers=headers) as r:
        assert r.status == 400
    async with api.session.get(
        URL(f"/resources/list/{folder}", encoded=True), headers=headers
    ) as r:
        assert r.status == 400
    form = aiohttp.FormData()
    form.add_field("data", b"x", filename="a.small")
    admin = bearer(make_token("Admin"))
    async with api.session.post(
        URL(f"/resources/{folder}", encoded=True), data=form, headers=admin
    ) as r:
        assert r.status == 400


async def test_cdn_yaml_is_served_from_the_empty_folder(api: Api) -> None:
    yaml_text = b"host: http://127.0.0.1:9000\ndownloader_access_key: k\n"
    (api.data_dir / "cdn.yaml").write_bytes(yaml_text)
    token = await api.login()
    r = await get_resource(api, token, "", "cdn.yaml")
    assert r.status == 200
    data = r.body
    assert oracle_decrypt_v1(oracle_api_key(OPERATOR, PASSWORD, HARDWARE), data) == yaml_text
    assert (await get_resource(api, token, "", "other.yaml")).status == 404


async def test_missing_cdn_yaml_is_404(api: Api) -> None:
    token = await api.login()
    assert (await get_resource(api, token, "", "cdn.yaml")).status == 404


# -- upload -----------------------------------------------------------------------------


async def upload(
    api: Api, token: str, folder: str, name: str, data: bytes
) -> tuple[int, dict[str, Any]]:
    # FormData would percent-encode the file name; like the upstream API, the
    # server stores the name as sent, so send it raw as most clients do.
    with aiohttp.MultipartWriter("form-data") as form:
        form.append("ignored").set_content_disposition("form-data", name="note")
        part = form.append(data, {"Content-Type": "application/octet-stream"})
        part.set_content_disposition("form-data", quote_fields=False, name="data", filename=name)
    async with api.session.post(f"/resources/{folder}", data=form, headers=bearer(token)) as r:
        return r.status, await r.json()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


async def test_uploader_stores_and_reads_back(api: Api) -> None:
    token = await api.login(UPLOADER, UPLOADER_PASSWORD)
    part = os.urandom(3072)
    assert await upload(api, token, "models", "yolo.small", part) == (200, {"status": "ok"})
    stored = api.data_dir / RESOURCES_DIR / "models" / "yolo.small"
    assert stored.read_bytes() == part
    assert leftovers(stored.parent) == []
    r = await get_resource(api, token, "models", "yolo.small", password=UPLOADER_PASSWORD)
    key = crypto.api_key(UPLOADER, UPLOADER_PASSWORD, HARDWARE)
    assert crypto.decrypt_v1(key, r.body) == part


async def test_upload_streams_parts_bigger_than_a_json_body(api: Api) -> None:
    part = os.urandom(MAX_UPLOAD - 1000)
    assert (await upload(api, make_token("Admin"), "models", "big.small", part))[0] == 200
    assert (api.data_dir / RESOURCES_DIR / "models" / "big.small").read_bytes() == part


async def test_upload_keeps_the_name_as_sent(api: Api) -> None:
    assert (await upload(api, make_token("Admin"), "models", "yolo v2 ü.small", b"x"))[0] == 200
    assert (api.data_dir / RESOURCES_DIR / "models" / "yolo v2 ü.small").read_bytes() == b"x"


async def test_upload_replaces_an_existing_part(api: Api) -> None:
    token = await api.login(UPLOADER, UPLOADER_PASSWORD)
    await upload(api, token, "models", "m.small", b"old")
    assert (await upload(api, token, "models", "m.small", b"new"))[0] == 200
    assert (api.data_dir / RESOURCES_DIR / "models" / "m.small").read_bytes() == b"new"


@pytest.mark.parametrize(("role", "status"), [("Admin", 200), ("ApiAdmin", 200)])
async def test_admin_roles_may_upload(api: Api, role: str, status: int) -> None:
    assert (await upload(api, make_token(role), "models", "a.small", b"x"))[0] == status


@pytest.mark.parametrize("role", ["Operator", "Validator", "CompanionPC", "Nobody"])
async def test_other_roles_may_not_upload(api: Api, role: str) -> None:
    status, body = await upload(api, make_token(role), "models", "a.small", b"x")
    assert status == 403
    assert "detail" in body
    assert not (api.data_dir / RESOURCES_DIR / "models").exists()


async def test_operator_login_cannot_upload(api: Api) -> None:
    token = await api.login()
    assert (await upload(api, token, "models", "a.small", b"x"))[0] == 403


@pytest.mark.parametrize("name", ["..", "a/b", ".hidden", "a\\b", "../../x", "x" * 256])
async def test_upload_with_unsafe_name_is_400(api: Api, name: str) -> None:
    status, _ = await upload(api, make_token("Admin"), "models", name, b"x")
    assert status == 400


async def test_upload_without_data_field_is_400(api: Api) -> None:
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="a.small")
    headers = bearer(make_token("Admin"))
    async with api.session.post("/resources/models", data=form, headers=headers) as r:
        assert r.status == 400
    async with api.session.post("/resources/models", json={"data": "x"}, headers=headers) as r:
        assert r.status == 400


async def test_upload_over_the_cap_is_413(api: Api) -> None:
    status, body = await upload(api, make_token("Admin"), "models", "a.small", b"x" * MAX_UPLOAD)
    assert status == 413
    assert "detail" in body
    directory = api.data_dir / RESOURCES_DIR / "models"
    assert not directory.exists() or list(directory.iterdir()) == []


async def test_chunked_upload_over_the_cap_is_413_and_leaves_nothing(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 65536

    with aiohttp.MultipartWriter("form-data") as writer:
        part = writer.append(chunks())
        part.set_content_disposition("form-data", name="data", filename="big.small")
    headers = bearer(make_token("Admin"))
    async with api.session.post("/resources/models", data=writer, headers=headers) as r:
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert r.status == 413
    assert list((api.data_dir / RESOURCES_DIR / "models").iterdir()) == []


# -- list, key fragment, errors ---------------------------------------------------------


async def test_list_filters_case_insensitively_and_sorts(api: Api) -> None:
    for name in ["beta.small", "Alpha.small", "alphabet.big", ".upload-123"]:
        api.put("models", name, b"x")
    (api.data_dir / RESOURCES_DIR / "models" / "subdir").mkdir()
    token = await api.login()
    headers = bearer(token)
    async with api.session.get("/resources/list/models", headers=headers) as r:
        assert r.status == 200
        assert await r.json() == ["Alpha.small", "alphabet.big", "beta.small"]
    async with api.session.get("/resources/list/models?search=ALPHA", headers=headers) as r:
        assert await r.json() == ["Alpha.small", "alphabet.big"]
    async with api.session.get("/resources/list/models?search=.small", headers=headers) as r:
        assert await r.json() == ["Alpha.small", "beta.small"]
    async with api.session.get("/resources/list/absent", headers=headers) as r:
        assert r.status == 200
        assert await r.json() == []


async def test_key_fragment_is_made_once_and_served_raw(api: Api) -> None:
    path = api.data_dir / KEY_FRAGMENT_FILE
    fragment = path.read_bytes()
    assert len(fragment) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = await api.login()
    async with api.session.get("/binary-split/key-fragment", headers=bearer(token)) as r:
        assert r.status == 200
        assert r.content_type == "application/octet-stream"
        assert await r.read() == fragment


async def test_key_fragment_survives_a_restart(data_dir: Path) -> None:
    fragments = []
    for _ in range(2):
        app = create_resource_api_app(ResourceApiConfig(data_dir=data_dir, jwt_secret=SECRET))
        runner = web.AppRunner(app)
        await runner.setup()
        await runner.cleanup()
        fragments.append((data_dir / KEY_FRAGMENT_FILE).read_bytes())
    assert fragments[0] == fragments[1]


async def test_unknown_route_and_wrong_method_answer_json(api: Api) -> None:
    async with api.session.get("/nope") as r:
        assert r.status == 404
        assert "detail" in await r.json()
    async with api.session.get("/login") as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
        assert "detail" in await r.json()


async def test_internal_errors_hide_the_details(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    (api.data_dir / RESOURCES_DIR / "models").write_bytes(b"a file where a folder belongs")
    status, body = await upload(api, make_token("Admin"), "models", "a.small", b"x")
    assert (status, body) == (500, {"detail": "internal server error"})
    assert any(r.exc_info for r in caplog.records)  # the server log keeps the traceback


def test_short_jwt_secret_is_refused(tmp_path: Path) -> None:
    from edgeloader.errors import ConfigError

    with pytest.raises(ConfigError):
        ResourceApiConfig(data_dir=tmp_path, jwt_secret="short")


# -- the resource-api command -----------------------------------------------------------


SERVE_SCRIPT = """
import sys
from edgeloader_publisher.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGELOADER_RESOURCE_API")}


async def test_resource_api_command_serves(data_dir: Path, serve_env: dict[str, str]) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", SERVE_SCRIPT, "resource-api", "--port", str(port)],
        *["--data-dir", str(data_dir)],
        env=serve_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        token = await _login_when_up(port, proc)
        secret_file = data_dir / "jwt_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        claims = jwt.decode(token, secret_file.read_text().strip(), algorithms=["HS256"])
        assert claims["unique_name"] == OPERATOR
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert PASSWORD.encode() not in stderr
    assert token.encode() not in stderr
    assert b"POST /login 200" in stderr


async def _login_when_up(port: int, proc: asyncio.subprocess.Process) -> str:
    body = {"email": OPERATOR, "password": PASSWORD}
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.returncode is None, "the server exited"
            try:
                async with session.post(f"http://127.0.0.1:{port}/login", json=body) as r:
                    token = (await r.json())["token"]
                    assert isinstance(token, str)
                    return token
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("the server did not come up")


def test_resource_api_command_refuses_a_short_secret(
    tmp_path: Path, serve_env: dict[str, str]
) -> None:
    env = {**serve_env, "EDGELOADER_RESOURCE_API_SECRET": "short"}
    argv = [sys.executable, "-c", SERVE_SCRIPT, "resource-api", "--data-dir", str(tmp_path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "32 bytes" in done.stderr
