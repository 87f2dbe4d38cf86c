"""The ``edgeloader`` client commands against the real stack (moto, the
reference Resource API, the loader in ``required`` mode; podman for unlock
and functions), each run as its own process: ``python -m edgeloader ...``
with ``HOME`` and ``XDG_CONFIG_HOME`` in a temporary folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeloader.cli.commands.common import format_bytes
from edgeloader_publisher.archive import encrypt_archive
from tests.support.cli import Cli, Result, peak_kib, run_in_pty
from tests.support.engines import (
    EngineService,
    image_exists,
    import_busybox_image,
    remove_image,
    save_images,
)
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import dead_url
from tests.support.harness.s3 import s3_client
from tests.support.stack import ADMIN, OPERATOR, Stack, pattern

UNLOCK_SERVICES = ("localhost/edgeloader-cli-a",)
UNLOCK_IMAGES = tuple(f"{repo}:latest" for repo in UNLOCK_SERVICES)
FN_IMAGE = "localhost/edgeloader-cli-fn:1"
MiB = 1 << 20


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home)


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[Stack]]) -> Stack:
    """The loader in the default auth mode, ``required``."""
    stack = await make_stack()
    await stack.start_loader(stack.settings(auth_mode="required"))
    return stack


@pytest.fixture
async def admin(cli: Cli, stack: Stack) -> Cli:
    """The CLI logged in as the admin, the device logged in upstream as it."""
    cli.url = stack.loader_url
    await cli.login(ADMIN, "--device")
    return cli


# -- login and the credentials file ------------------------------------------------


async def test_login_keeps_a_private_token_pair_and_no_password(cli: Cli, stack: Stack) -> None:
    cli.url = stack.loader_url
    result = await cli.login(ADMIN, "--json")
    answer = result.json()
    assert answer["user"] == ADMIN[0]
    assert answer["role"] == "Admin"
    assert answer["credentials"] == str(cli.credentials)
    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o700
    raw = cli.credentials.read_text()
    assert ADMIN[1] not in raw
    entry = cli.stored()[stack.loader_url]
    assert entry["user"] == ADMIN[0]
    assert entry["expiresAt"] > time.time()
    # The stored access token works on the service.
    headers = {"Authorization": f"Bearer {entry['accessToken']}"}
    async with stack.http.get(f"{stack.loader_url}/api/keys", headers=headers) as resp:
        assert resp.status == 200
    # Nothing secret on the terminal either.
    assert entry["accessToken"] not in result.text + result.err


async def test_a_wrong_password_is_one_line_and_stores_nothing(cli: Cli, stack: Stack) -> None:
    cli.url = stack.loader_url
    result = await cli.run("login", "--email", ADMIN[0], "--password-stdin", input="nope")
    assert result.code == 1
    assert result.one_error_line() == "edgeloader: invalid email or password (HTTP 401)"
    assert not cli.credentials.exists()


async def test_a_server_that_is_down_is_one_line(cli: Cli) -> None:
    url = dead_url()
    for args in (
        ("login", "--email", ADMIN[0], "--password-stdin"),
        ("load", "m.bin", "-o", str(cli.home / "m.bin")),
        ("keys", "list"),
    ):
        result = await cli.run("--url", url, *args, input=ADMIN[1])
        assert result.code == 1, result
        line = result.one_error_line()
        assert line == (
            f"edgeloader: cannot reach the service at {url}: Connection refused; start it "
            "with `edgeloader serve` (`make run` in a checkout), or point --url or "
            "$EDGELOADER_URL at it"
        )
    assert not (cli.home / "m.bin").exists()


async def test_no_password_off_a_terminal_is_a_usage_error(cli: Cli, stack: Stack) -> None:
    cli.url = stack.loader_url
    result = await cli.run("login", "--email", ADMIN[0])
    assert result.code == 2
    assert "no password" in result.one_error_line()
    result = await cli.run("login", "--password-stdin", input=ADMIN[1])
    assert result.code == 2
    assert "no email" in result.one_error_line()


async def test_a_command_without_login_says_to_log_in(cli: Cli, stack: Stack) -> None:
    cli.url = stack.loader_url
    result = await cli.run("keys", "list")
    assert result.code == 1
    assert f"not logged in to {stack.loader_url}: run `edgeloader login`" in result.one_error_line()


async def test_expired_access_token_is_refreshed_and_rotated(
    cli: Cli, make_stack: Callable[..., Awaitable[Stack]]
) -> None:
    stack = await make_stack()
    # Shorter than the client's 30 s margin: every command refreshes first.
    await stack.start_loader(stack.settings(auth_mode="required", access_token_ttl=5))
    cli.url = stack.loader_url
    await cli.login()
    first = cli.stored()[stack.loader_url]
    await cli.ok("keys", "list")
    second = cli.stored()[stack.loader_url]
    assert second["refreshToken"] != first["refreshToken"]
    assert second["accessToken"] != first["accessToken"]
    assert second["user"] == ADMIN[0]
    # The old refresh token was used up: the service refuses it.
    body = {"refreshToken": first["refreshToken"]}
    async with stack.http.post(f"{stack.loader_url}/api/auth/refresh", json=body) as resp:
        assert resp.status == 401


async def test_a_refused_access_token_is_refreshed_once(admin: Cli, stack: Stack) -> None:
    entry = admin.stored()[stack.loader_url]
    doc = json.loads(admin.credentials.read_text())
    doc["servers"][stack.loader_url]["accessToken"] = "not-a-token"
    admin.credentials.write_text(json.dumps(doc))
    await admin.ok("keys", "list")
    fresh = admin.stored()[stack.loader_url]
    assert fresh["accessToken"] != "not-a-token"
    assert fresh["refreshToken"] != entry["refreshToken"]


async def test_an_ended_session_says_to_log_in_again(admin: Cli, stack: Stack) -> None:
    doc = json.loads(admin.credentials.read_text())
    doc["servers"][stack.loader_url]["accessToken"] = "not-a-token"
    doc["servers"][stack.loader_url]["refreshToken"] = "not-a-token-either"
    admin.credentials.write_text(json.dumps(doc))
    result = await admin.run("keys", "list")
    assert result.code == 1
    assert "run `edgeloader login` again" in result.one_error_line()
    assert stack.loader_url not in admin.stored()


async def test_concurrent_commands_share_one_refresh(
    cli: Cli, make_stack: Callable[..., Awaitable[Stack]]
) -> None:
    """Four commands find the same expired token at once: one refreshes, the
    others use its pair (a second use of the token would end the session)."""
    stack = await make_stack()
    await stack.start_loader(stack.settings(auth_mode="required", access_token_ttl=5))
    cli.url = stack.loader_url
    await cli.login()
    results = await asyncio.gather(*(cli.run("keys", "list") for _ in range(4)))
    assert [r.code for r in results] == [0, 0, 0, 0], [r.err for r in results]
    await cli.ok("keys", "list")


async def test_logout_revokes_and_forgets(admin: Cli, stack: Stack) -> None:
    entry = admin.stored()[stack.loader_url]
    result = await admin.ok("logout")
    assert result.text.strip() == f"logged out of {stack.loader_url}"
    assert stack.loader_url not in admin.stored()
    body = {"refreshToken": entry["refreshToken"]}
    async with stack.http.post(f"{stack.loader_url}/api/auth/refresh", json=body) as resp:
        assert resp.status == 401
    assert (await admin.ok("logout")).text.strip() == f"not logged in to {stack.loader_url}"


async def test_one_entry_per_server(admin: Cli, stack: Stack, make_stack: Any) -> None:
    other = await make_stack()
    await other.start_loader(other.settings(auth_mode="required"))
    await admin.ok(
        "--url",
        other.loader_url,
        "login",
        "--email",
        OPERATOR[0],
        "--password-stdin",
        input=OPERATOR[1],
    )
    servers = admin.stored()
    assert servers[stack.loader_url]["role"] == "Admin"
    assert servers[other.loader_url]["role"] == "Operator"
    # The operator may not list keys there; the admin still may here.
    denied = await admin.run("--url", other.loader_url, "keys", "list")
    assert denied.code == 1
    assert "role Operator may not call GET /api/keys" in denied.one_error_line()
    await admin.ok("keys", "list")


# -- load and upload ---------------------------------------------------------------


async def test_upload_then_load_to_a_file_and_to_stdout(
    admin: Cli, stack: Stack, tmp_path: Path
) -> None:
    data = pattern(3 * MiB + 7)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    result = await admin.ok("upload", str(source), "--folder", stack.bucket, "--json")
    assert result.json() == {
        "status": "ok",
        "filename": "model.bin",
        "folder": stack.bucket,
        "size": len(data),
    }
    target = tmp_path / "out" / "loaded.bin"
    target.parent.mkdir()
    result = await admin.ok("load", "model.bin", "--folder", stack.bucket, "-o", str(target))
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert result.text.startswith(f"loaded {stack.bucket}/model.bin (3.0 MiB) into {target}")
    assert [p.name for p in target.parent.iterdir()] == ["loaded.bin"]  # no partial left
    # To stdout, the summary on stderr; into a folder, under the resource's name.
    result = await admin.ok("load", "model.bin", "--folder", stack.bucket)
    assert result.out == data
    assert result.err.splitlines()[-1] == f"loaded {stack.bucket}/model.bin (3.0 MiB)"
    await admin.ok(
        "load", "model.bin", "--folder", stack.bucket, "-o", str(target.parent), "--json"
    )
    assert (target.parent / "model.bin").read_bytes() == data


async def test_upload_under_another_name(admin: Cli, stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "local-name.bin"
    source.write_bytes(b"small model")
    result = await admin.ok("upload", str(source), "--name", "remote.bin", "--folder", stack.bucket)
    assert result.text.strip() == f"uploaded {source} as {stack.bucket}/remote.bin (11 B)"
    assert (await admin.ok("load", "remote.bin", "--folder", stack.bucket)).out == b"small model"


async def test_missing_file_and_missing_resource(admin: Cli, stack: Stack, tmp_path: Path) -> None:
    result = await admin.run("upload", str(tmp_path / "absent.bin"))
    assert result.code == 2
    assert result.one_error_line() == f"edgeloader: {tmp_path / 'absent.bin'}: no such file"
    out = tmp_path / "absent.out"
    result = await admin.run("load", "absent.bin", "--folder", stack.bucket, "-o", str(out))
    assert result.code == 1
    assert result.one_error_line().endswith("(HTTP 404)")
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".absent.out")]
    result = await admin.run("load", "../x", "-o", str(out))
    assert result.code == 2
    assert "(HTTP 400)" in result.one_error_line()


async def test_load_needs_the_device_logged_in(cli: Cli, stack: Stack, tmp_path: Path) -> None:
    cli.url = stack.loader_url
    await cli.login()  # tokens only: the device is not logged in upstream
    result = await cli.run("load", "m.bin", "--folder", stack.bucket, "-o", str(tmp_path / "m"))
    assert result.code == 1
    assert "run `edgeloader login --device`" in result.one_error_line()


async def test_plain_progress_lines_off_a_terminal(
    admin: Cli, stack: Stack, tmp_path: Path
) -> None:
    stack.publish("big.bin", pattern(4 * MiB))
    result = await admin.ok("load", "big.bin", "--folder", stack.bucket, "-o", str(tmp_path / "b"))
    lines = result.err.splitlines()
    # A few lines, one per quarter at most (spaced in time), and always the last.
    assert 1 <= len(lines) <= 4, lines
    assert all(re.fullmatch(r"load \d / 4 MiB \((25|50|75|100)%\)", line) for line in lines)
    assert lines[-1] == "load 4 / 4 MiB (100%)"
    assert "\r" not in result.err
    # --json: no progress, one document.
    result = await admin.ok(
        "load", "big.bin", "--folder", stack.bucket, "-o", str(tmp_path / "c"), "--json"
    )
    assert result.err == ""
    assert result.json()["bytes"] == 4 * MiB


# -- prefetch ----------------------------------------------------------------------


async def test_prefetch_wait_follows_to_done(admin: Cli, stack: Stack) -> None:
    stack.publish("pre.bin", pattern(2 * MiB + 5))
    small = stack.api_dir / "resources" / stack.bucket / "pre.bin.small"
    big = s3_client(stack.s3_endpoint).head_object(Bucket=stack.bucket, Key="pre.bin.big")
    total = small.stat().st_size + big["ContentLength"]
    result = await admin.ok("prefetch", "pre.bin", "--folder", stack.bucket, "--wait")
    size = format_bytes(total)
    assert result.text == f"prefetch {stack.bucket}/pre.bin: done ({size} in the cache)\n"
    # Asked again: from the cache at once, one JSON document.
    again = await admin.ok("prefetch", "pre.bin", "--folder", stack.bucket, "--wait", "--json")
    assert again.json() == {
        "folder": stack.bucket,
        "name": "pre.bin",
        "state": "done",
        "bytesDone": total,
        "bytesTotal": total,
        "error": None,
    }
    assert again.err == ""
    # Without --wait: the job's state as the service answered it.
    started = await admin.ok("prefetch", "pre.bin", "--folder", stack.bucket, "--json")
    assert started.json()["state"] in ("running", "waiting", "verifying", "done")


async def test_prefetch_failures_are_one_line(admin: Cli, stack: Stack) -> None:
    result = await admin.run("prefetch", "absent.bin", "--folder", stack.bucket, "--wait")
    assert result.code == 1
    *states, line = result.err.splitlines()
    assert states == ["prefetch: running"]  # the answer to POST, as with any state
    assert line.startswith(f"edgeloader: pre-staging of {stack.bucket}/absent.bin failed: ")
    assert "not found" in line
    assert result.text == ""  # the failure is said once, as the error line
    machine = await admin.run(
        "prefetch", "absent.bin", "--folder", stack.bucket, "--wait", "--json"
    )
    assert machine.code == 1
    assert machine.json()["state"] == "failed"  # --json still gets the final status
    assert machine.one_error_line() == line
    result = await admin.run("prefetch", "m.bin", "--folder", "../etc")
    assert result.code == 2
    assert "(HTTP 400)" in result.one_error_line()


async def test_prefetch_that_waits_says_why_and_times_out(cli: Cli, stack: Stack) -> None:
    cli.url = stack.loader_url
    await cli.login()  # tokens only: the job waits for the device's login
    stack.publish("m.bin", pattern(1000))
    args = ("prefetch", "m.bin", "--folder", stack.bucket, "--wait", "--timeout", "1")
    result = await cli.run(*args)
    assert result.code == 1
    assert result.err.splitlines() == [
        "prefetch: running",  # the answer to POST; the job then finds no login
        "prefetch: waiting (the device is not logged in upstream)",
        f"edgeloader: pre-staging of {stack.bucket}/m.bin is still waiting after 1 s",
    ]
    await stack.login()  # the device logs in: the same job goes on and ends
    result = await cli.ok(*args[:-2], "--json")
    assert result.json()["state"] == "done"


async def test_prefetch_without_a_cache_is_one_line(
    cli: Cli, make_stack: Callable[..., Awaitable[Stack]]
) -> None:
    stack = await make_stack()
    await stack.start_loader(stack.settings(auth_mode="required", cache_dir=None))
    cli.url = stack.loader_url
    await cli.login()
    result = await cli.run("prefetch", "m.bin", "--folder", stack.bucket)
    assert result.code == 1
    line = result.one_error_line()
    assert "EDGELOADER_CACHE_DIR" in line
    assert line.endswith("(HTTP 409)")


async def test_memory_does_not_grow_with_the_file(admin: Cli, stack: Stack, tmp_path: Path) -> None:
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(pattern(1 * MiB))
    big.write_bytes(pattern(64 * MiB))
    peaks = {}
    for path in (small, big):
        up = await peak_kib(admin, "upload", str(path), "--folder", stack.bucket)
        down = await peak_kib(
            admin, "load", path.name, "--folder", stack.bucket, "-o", str(tmp_path / "out")
        )
        assert (tmp_path / "out").stat().st_size == path.stat().st_size
        peaks[path.name] = (up, down)
    # 64 times the data, the same few MiB of buffers.
    for before, after in zip(peaks["small.bin"], peaks["big.bin"], strict=True):
        assert after - before < 16 * 1024, peaks


async def test_a_terminal_sees_a_progress_bar(admin: Cli, stack: Stack, tmp_path: Path) -> None:
    stack.publish("tty.bin", pattern(6 * MiB))
    target = tmp_path / "tty.bin"
    args = ["load", "tty.bin", "--folder", stack.bucket, "-o", str(target)]
    code, screen = await asyncio.to_thread(run_in_pty, args, admin.env())
    assert code == 0, screen
    assert target.stat().st_size == 6 * MiB
    # The bar: its name, a percentage, bytes done of the total, a rate and an ETA.
    assert re.search(r"load: +100%\|", screen), screen
    assert re.search(r"6\.00MiB/6\.00MiB \[\d\d:\d\d<\d\d:\d\d, +[\d.]+\wiB/s\]", screen), screen
    assert "\r" in screen  # redrawn in place


# -- keys and audit -------------------------------------------------------------------


async def test_keys_create_list_revoke_and_the_audit(admin: Cli, stack: Stack) -> None:
    created = (
        await admin.ok("keys", "create", "camera-agent", "--role", "Operator", "--json")
    ).json()
    assert created["name"] == "camera-agent"
    assert created["apiKey"].startswith("elk_")
    text = await admin.ok("keys", "create", "other", "--role", "CompanionPC", "--validity", "1h")
    key = text.text.strip()
    assert key.startswith("elk_")
    assert "shown this once" in text.err
    async with stack.http.post(
        f"{stack.loader_url}/api/auth/token", json={"apiKey": created["apiKey"]}
    ) as resp:
        assert resp.status == 200
    listed = (await admin.ok("keys", "list", "--json")).json()["keys"]
    assert {k["name"] for k in listed} == {"camera-agent", "other"}
    assert all("apiKey" not in k for k in listed)
    header, *rows = (await admin.ok("keys", "list")).text.splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES"]
    assert header.index("NAME") == rows[0].index(rows[0].split()[1])  # columns aligned
    assert [created["id"], "camera-agent", "Operator", "active"] in [r.split()[:4] for r in rows]
    revoked = await admin.ok("keys", "revoke", created["id"])
    assert revoked.text.strip() == f"revoked key {created['id']}"
    again = await admin.run("keys", "revoke", created["id"])
    assert again.code == 1
    assert again.one_error_line().endswith("(HTTP 404)")
    bad = await admin.run("keys", "create", "x", "--role", "Nobody")
    assert bad.code == 2
    assert "invalid choice" in bad.err

    entries = (await admin.ok("audit", "--json")).json()["entries"]
    actions = [e["action"] for e in entries]
    assert "key-create" in actions, actions
    assert "key-revoke" in actions, actions
    text_lines = (await admin.ok("audit", "--since", "1h", "--limit", "5")).text.splitlines()
    assert 1 <= len(text_lines) <= 5
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  ", text_lines[0])
    # --limit N: the newest N, oldest first.
    everything = (await admin.ok("audit", "--limit", "1000", "--json")).json()["entries"]
    newest = (await admin.ok("audit", "--limit", "2", "--json")).json()["entries"]
    assert len(everything) > 2
    assert newest == everything[-2:]
    future = await admin.ok("audit", "--since", str(time.time() + 3600))
    assert future.text.strip() == "no audit entries"
    bad_since = await admin.run("audit", "--since", "yesterday-ish")
    assert bad_since.code == 2


# -- unlock --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def unlock_archive(engine: EngineService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for ref in UNLOCK_IMAGES:
        import_busybox_image(engine, ref)
    return save_images(engine, UNLOCK_IMAGES, tmp_path_factory.mktemp("cli-images") / "i.tar")


@pytest.fixture
async def unlocker(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, unlock_archive: Path
) -> Stack:
    """A loader in ``required`` mode with an archive to unlock, on a clean engine."""
    for ref in UNLOCK_IMAGES:
        remove_image(engine, ref)
    stack = await make_stack()
    fragment = (stack.api_dir / "key_fragment").read_bytes()
    archive = stack.tmp / "images.enc"
    await encrypt_archive(unlock_archive, archive, fragment)
    settings = stack.settings(
        auth_mode="required",
        images_path=archive,
        api_services=UNLOCK_SERVICES,
        docker_host=engine.docker_host,
    )
    await stack.start_loader(settings)
    return stack


async def test_unlock_wait_follows_to_ready(
    cli: Cli, unlocker: Stack, engine: EngineService
) -> None:
    cli.url = unlocker.loader_url
    await cli.login()
    # The email defaults to the logged-in user's.
    result = await cli.ok("unlock", "--wait", "--password-stdin", input=ADMIN[1])
    loaded = ", ".join(UNLOCK_IMAGES)
    assert re.fullmatch(rf"unlock: ready, loaded {loaded} \([\d.]+ \w+ decrypted\)\n", result.text)
    assert "unlock: authenticating" in result.err or "unlock: decrypting" in result.err
    for ref in UNLOCK_IMAGES:
        assert image_exists(engine, ref)
    # Again: ready at once, as one JSON document.
    again = await cli.ok("unlock", "--wait", "--password-stdin", "--json", input=ADMIN[1])
    assert again.json()["state"] == "ready"
    assert again.json()["images"] == list(UNLOCK_IMAGES)
    assert again.err == ""
    text = await cli.ok("unlock", "--wait", "--password-stdin", input=ADMIN[1])
    assert text.text == f"unlock: ready, {loaded} already in the engine\n"


async def test_unlock_with_a_wrong_password_fails_with_its_reason(
    cli: Cli, unlocker: Stack, engine: EngineService
) -> None:
    cli.url = unlocker.loader_url
    await cli.login()
    result = await cli.run(
        "unlock", "--email", ADMIN[0], "--wait", "--password-stdin", "--json", input="wrong"
    )
    assert result.code == 1
    assert result.json()["state"] == "error"
    assert result.one_error_line() == "edgeloader: unlock failed: invalid email or password"
    for ref in UNLOCK_IMAGES:
        assert not image_exists(engine, ref)


async def test_unlock_without_wait_answers_the_state(cli: Cli, unlocker: Stack) -> None:
    cli.url = unlocker.loader_url
    await cli.login()
    result = await cli.ok("unlock", "--password-stdin", "--json", input=ADMIN[1])
    assert result.json()["state"] in ("authenticating", "downloading_key", "decrypting", "ready")
    await cli.ok("unlock", "--wait", "--password-stdin", input=ADMIN[1])


# -- functions ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fn_image(engine: EngineService) -> str:
    import_busybox_image(engine, FN_IMAGE)
    return FN_IMAGE


@pytest.fixture
async def fn_admin(
    cli: Cli, make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, fn_image: str
) -> Cli:
    stack = await make_stack()
    await stack.start_loader(stack.settings(auth_mode="required", docker_host=engine.docker_host))
    cli.url = stack.loader_url
    await cli.login()
    return cli


async def test_fn_deploy_invoke_runs_logs(fn_admin: Cli, tmp_path: Path) -> None:
    script = 'cat request.json > result.json; echo "out:$GREETING"; echo "err line" >&2'
    deployed = await fn_admin.ok(
        "fn", "deploy", "greet", "--image", FN_IMAGE, "--command", f"sh -c '{script}'",
        "--env", "GREETING=hello", "--memory-mb", "64", "--timeout", "20", "--json",
    )  # fmt: skip
    record = deployed.json()
    assert (record["name"], record["version"], record["envKeys"]) == ("greet", 1, ["GREETING"])
    assert record["limits"]["memoryMb"] == 64
    again = await fn_admin.ok(
        "fn",
        "deploy",
        "greet",
        "--image",
        FN_IMAGE,
        "--command",
        f"sh -c '{script}'",
        "--env",
        "GREETING=hello",
    )
    assert again.text.startswith("deployed greet version 2 (image ")

    payload = tmp_path / "payload.json"
    payload.write_text('{"name": "Ada"}')
    run = (await fn_admin.ok("fn", "invoke", "greet", "--data", f"@{payload}", "--json")).json()
    assert run["status"] == "succeeded"
    assert run["result"] == {"name": "Ada"}
    text = await fn_admin.ok("fn", "invoke", "greet", "--data", "-", input='{"n": 1}')
    first, second = text.text.splitlines()
    assert re.match(r"run \S+ of greet v2: succeeded in \d+ ms$", first)
    assert json.loads(second) == {"n": 1}
    queued = (await fn_admin.ok("fn", "invoke", "greet", "--async")).text.strip()

    runs = (await fn_admin.ok("fn", "runs", "greet", "--json")).json()["runs"]
    assert run["runId"] in {r["runId"] for r in runs}
    assert queued in {r["runId"] for r in runs}
    lines = (await fn_admin.ok("fn", "runs", "--status", "succeeded")).text.splitlines()
    assert lines[0].split()[:4] == ["RUN", "ID", "FUNCTION", "VERSION"]
    assert any(line.split()[:4] == [run["runId"], "greet", "v2", "succeeded"] for line in lines)

    logs = await fn_admin.ok("fn", "logs", run["runId"])
    assert logs.text == "out:hello\n"
    assert logs.err == "err line\n"
    as_json = (await fn_admin.ok("fn", "logs", run["runId"], "--json")).json()
    assert as_json["stdout"] == "out:hello\n"
    listing = await fn_admin.ok("fn", "list")
    assert listing.text.splitlines()[0].split() == ["NAME", "VERSION", "IMAGE", "UPDATED"]
    assert listing.text.splitlines()[1].split()[:3] == ["greet", "v2", FN_IMAGE]
    assert re.search(r" \d+ ms +[\d.]+ MiB +cold +\d", lines[1]), lines[1]

    described = (await fn_admin.ok("fn", "describe", "greet")).text.splitlines()
    assert described[0] == f"greet  v2  {FN_IMAGE}"
    assert "  models       -" in described
    assert "  warm         no (a container per run)" in described
    assert any(line.startswith("  stats        ") and "cold starts" in line for line in described)
    await fn_admin.ok(
        "fn", "deploy", "greet", "--image", FN_IMAGE, "--disk-mb", "8",
        "--model", "models/m.bin", "--warm", "1:30",
    )  # fmt: skip
    record = (await fn_admin.ok("fn", "describe", "greet", "--json")).json()["function"]
    assert record["limits"]["diskMb"] == 8
    assert record["models"] == [{"folder": "models", "name": "m.bin"}]
    assert record["warm"] == {"max": 1, "idleS": 30}
    bad = await fn_admin.run("fn", "deploy", "greet", "--image", FN_IMAGE, "--model", "m.bin")
    assert bad.code == 2
    assert "--model: expected FOLDER/NAME" in bad.err


async def test_fn_deploy_builds_from_a_folder(fn_admin: Cli, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f'FROM {FN_IMAGE}\nCOPY app.sh /app.sh\nCMD ["sh", "/app.sh"]\n'
    )
    (context / "app.sh").write_text("echo '\"built\"' > result.json\n")
    built = await fn_admin.ok("fn", "deploy", "built", "--context", str(context), "--timeout", "10")
    assert built.text.startswith("deployed built version 1 (image localhost/edgeloader-fn-built:1")
    run = (await fn_admin.ok("fn", "invoke", "built", "--json")).json()
    assert run["result"] == "built"
    no_dockerfile = tmp_path / "empty"
    no_dockerfile.mkdir()
    result = await fn_admin.run("fn", "deploy", "x", "--context", str(no_dockerfile))
    assert result.code == 2
    assert "no Dockerfile" in result.one_error_line()


async def test_fn_failures_are_one_line(fn_admin: Cli) -> None:
    await fn_admin.ok(
        "fn", "deploy", "fails", "--image", FN_IMAGE, "--command", "sh -c 'echo broken >&2; exit 3'"
    )
    result = await fn_admin.run("fn", "invoke", "fails", "--json")
    assert result.code == 1
    assert result.json()["status"] == "failed"
    line = result.one_error_line()
    assert re.match(r"edgeloader: run \S+ failed: exited with code 3: broken$", line), line
    missing = await fn_admin.run("fn", "invoke", "nosuch")
    assert missing.code == 1
    assert missing.one_error_line().endswith("(HTTP 404)")
    bad = await fn_admin.run("fn", "deploy", "x", "--image", FN_IMAGE, "--memory-mb", "1")
    assert bad.code == 2
    assert "memoryMb" in bad.one_error_line()
    bad_json = await fn_admin.run("fn", "invoke", "fails", "--data", "{not json")
    assert bad_json.code == 2
    assert "--data: not JSON" in bad_json.one_error_line()


# -- doctor ---------------------------------------------------------------------------


def _verdicts(result: Result) -> dict[str, tuple[str, str]]:
    doc = result.json()
    return {c["check"]: (c["verdict"], c["detail"]) for c in doc["checks"]}


async def test_doctor_on_a_healthy_local_service(
    cli: Cli, make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, tmp_path: Path
) -> None:
    stack = await make_stack()
    key = tmp_path / "publisher.pub.pem"
    public = Ed25519PrivateKey.generate().public_key()
    key.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    state = tmp_path / "loader-state"
    with contextlib.ExitStack() as cleanup:
        # A service given its settings in its environment: the doctor asks
        # the service for them, never its process.
        _, url = await start_loader_process(
            stack.api_url,
            state,
            tmp_path,
            cleanup,
            DOCKER_HOST=engine.docker_host,
            EDGELOADER_PUBLISHER_KEY=str(key),
        )
        cli.url = url
        await cli.login(ADMIN, "--device")
        result = await cli.ok("doctor", "--json")
        checks = _verdicts(result)
        assert result.json()["ok"] is True
        assert checks["service"] == ("ok", f"healthy at {url}")
        assert checks["session"] == ("ok", f"logged in as {ADMIN[0]}, role Admin")
        assert checks["device login"][0] == "ok"
        assert checks["resource api"][0] == "ok"
        assert stack.api_url in checks["resource api"][1]
        assert checks["engine"][0] == "ok"
        name = {"podman": "podman ", "docker": "Docker Engine "}[engine.kind]
        assert checks["engine"][1].startswith(name), checks["engine"]
        assert checks["state folder"] == ("ok", f"{state} exists, mode 0700, private")
        assert checks["publisher key"][0] == "ok"
        assert checks["aes"][0] in ("ok", "warn")
        assert checks["run folders"][0] == "ok"
        assert checks["function images"] == ("ok", "no function is deployed")
        assert checks["model store"][0] == "ok"
        verdict, detail = checks["engine tmpdir"]
        assert verdict in ("ok", "warn")
        assert "TMPDIR" in detail
        assert "pid" in detail

        text = await cli.ok("doctor")
        lines = text.text.splitlines()
        assert len(lines) == len(checks)
        assert all(re.match(r"(ok|warn|fail) +\S", line) for line in lines)

        # A state folder opened to others, and a broken publisher key: failures.
        state.chmod(0o755)
        key.write_text("not a key")
        result = await cli.run("doctor", "--json")
        assert result.code == 1
        checks = _verdicts(result)
        assert checks["state folder"][0] == "fail"
        assert "mode 0755" in checks["state folder"][1]
        assert checks["publisher key"][0] == "fail"
        assert result.one_error_line() == (
            "edgeloader: 2 check(s) failed: state folder, publisher key"
        )
        state.chmod(0o700)


async def test_doctor_for_another_role_says_its_service_checks_need_an_admin(
    cli: Cli, stack: Stack
) -> None:
    cli.url = stack.loader_url
    await cli.login(OPERATOR)
    result = await cli.ok("doctor", "--json")
    checks = _verdicts(result)
    assert list(checks) == ["service", "session", "device login", "service checks"]
    assert checks["session"] == ("ok", f"logged in as {OPERATOR[0]}, role Operator")
    assert checks["service checks"] == (
        "warn",
        "role Operator: doctor's service checks need an admin login (Admin or ApiAdmin): "
        "run `edgeloader login` as one to see the engine, the state folder, the keys, "
        "the functions and the service's machine",
    )
    text = (await cli.ok("doctor")).text.splitlines()
    assert text[-1].startswith("warn  service checks   role Operator: ")


async def test_doctor_with_the_service_down(cli: Cli) -> None:
    cli.url = dead_url()
    result = await cli.run("doctor")
    assert result.code == 1
    assert result.text.splitlines()[0].startswith("fail  service ")
    assert "service" in result.one_error_line()
