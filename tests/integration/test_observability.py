"""What an operator watches, on the real stack (moto, the reference Resource
API, the loader, podman): ``/metrics`` and the series the services feed, the
event stream ``/api/events``, request ids, and logs without secrets."""

# The unlock tests' fixtures are imported by name and requested as parameters.

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloader import crypto, logs
from edgeloader.auth import signing_key
from edgeloader.functions.records import RunStatus
from edgeloader.roles import Role
from edgeloader.web.state import SERVICES
from edgeloader_publisher.release import generate_keypair
from tests.support.engines import EngineService, import_busybox_image
from tests.support.harness.net import wait_for
from tests.support.stack import ADMIN, CDN_KEYS, FINGERPRINT, OPERATOR, Stack, pattern
from tests.support.unlocks import REPOS, encrypted_archive

JSON = dict[str, Any]
FUNCTION_IMAGE = "localhost/edgeloader-obs-fn:1"
FUNCTION_SECRET = "fn-env-secret-value-7d1f"
ECHO = "cat request.json > result.json"
CREDS = {"email": ADMIN[0], "password": ADMIN[1]}
MiB = 1 << 20
UNLOCK_STATES = ["authenticating", "downloading_key", "decrypting", "loading_images", "ready"]

Key = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(scope="session")
def function_image(engine: EngineService) -> str:
    import_busybox_image(engine, FUNCTION_IMAGE)
    return FUNCTION_IMAGE


# -- the loader seen by a client ---------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Loader:
    stack: Stack
    url: str

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.stack.http

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Answer:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, headers=sent, **kwargs) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            body: Any = json.loads(raw) if "json" in ctype else raw
            return Answer(resp.status, body, dict(resp.headers))

    async def pair(self, creds: tuple[str, str] = ADMIN) -> JSON:
        answer = await self.call(
            "POST", "/api/auth/login", json={"email": creds[0], "password": creds[1]}
        )
        assert answer.status == 200, answer.body
        return answer.body  # type: ignore[no-any-return]

    async def token(self, creds: tuple[str, str] = ADMIN) -> str:
        return str((await self.pair(creds))["accessToken"])

    async def api_key(self, admin: str, role: str) -> str:
        answer = await self.call(
            "POST",
            "/api/keys",
            admin,
            json={"name": f"{role} scraper", "role": role, "validity": "1d"},
        )
        assert answer.status == 201, answer.body
        return str(answer.body["apiKey"])

    async def scrape(self, token: str) -> Samples:
        answer = await self.call("GET", "/metrics", token)
        assert answer.status == 200, answer.body
        assert answer.headers["Content-Type"].startswith("text/plain")
        return Samples.parse(answer.body.decode())

    async def unlocked(self, token: str) -> JSON:
        status: JSON = {}

        async def ended() -> bool:
            nonlocal status
            status = (await self.call("GET", "/unlock/status", token)).body
            return status["state"] in ("ready", "error")

        await wait_for(ended, 120, failure="the unlock did not end")
        return status


@dataclass
class Samples:
    values: dict[Key, float]

    @classmethod
    def parse(cls, text: str) -> Samples:
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(values)

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def labels(self, prefix: str) -> set[str]:
        """Every label value of the series whose names start with ``prefix``."""
        return {
            value
            for (name, labels) in self.values
            for _, value in labels
            if name.startswith(prefix)
        }


@dataclass
class Delta:
    before: Samples
    after: Samples

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.get(name, **labels) - self.before.get(name, **labels)


async def start(stack: Stack, engine: EngineService, archive: Path, **extra: Any) -> Loader:
    settings = stack.settings(
        auth_mode="required",
        docker_host=engine.docker_host,
        images_path=archive,
        api_services=REPOS,
        **extra,
    )
    return Loader(stack, await stack.start_loader(settings))


@pytest.fixture
async def loader(
    make_stack: Any, clean_engine: EngineService, plain_archive: Path, function_image: str
) -> Loader:
    """A loader in ``required`` mode with an archive to unlock and the
    function image in its engine."""
    stack: Stack = await make_stack()
    archive = await encrypted_archive(stack, plain_archive)
    return await start(stack, clean_engine, archive)


# -- the main flows ------------------------------------------------------------------


@dataclass
class Flows:
    """What ``drive`` did, and every secret it handled."""

    admin: str = ""
    loaded: bytes = b""
    uploaded: bytes = b""
    run: JSON = field(default_factory=dict)
    archive_size: int = 0
    secrets: dict[str, str] = field(default_factory=dict)

    def secret(self, what: str, value: str) -> None:
        self.secrets[what] = value


async def device_login(loader: Loader, token: str) -> JSON:
    answer = await loader.call("POST", "/login", token, json=CREDS)
    assert answer.status == 200, answer.body
    return answer.body  # type: ignore[no-any-return]


async def drive(loader: Loader, flows: Flows, before: Any = None) -> None:
    """Login, load (from the CDN, then from the cache), upload, unlock, a
    failed login, an API key's creation and exchange, a refresh, and a
    function's deploy and invoke. ``before`` runs once the tokens exist."""
    stack = loader.stack
    pair = await loader.pair(ADMIN)
    flows.admin = admin = pair["accessToken"]
    flows.secret("access token", admin)
    flows.secret("refresh token", pair["refreshToken"])
    device = await device_login(loader, admin)
    flows.secret("device login access token", device["accessToken"])
    flows.secret("device login refresh token", device["refreshToken"])
    if before is not None:
        await before(admin)

    flows.loaded = pattern(300_000)
    stack.publish("m.bin", flows.loaded)
    for _ in range(2):  # the CDN, then the cache
        answer = await loader.call("POST", "/load/m.bin", admin, json={"folder": stack.bucket})
        assert answer.status == 200
        assert answer.body == flows.loaded

    flows.uploaded = pattern(150_000)
    form = aiohttp.FormData()
    form.add_field("data", flows.uploaded, filename="up.bin")
    answer = await loader.call("POST", f"/upload/up.bin?folder={stack.bucket}", admin, data=form)
    assert answer.status == 200, answer.body

    answer = await loader.call("POST", "/unlock", admin, json=CREDS)
    assert answer.status == 200, answer.body
    status = await loader.unlocked(admin)
    assert status["state"] == "ready", status
    flows.archive_size = status["bytesTotal"]

    wrong = {"email": OPERATOR[0], "password": "not-the-password-9a1e"}
    flows.secret("wrong password", wrong["password"])
    assert (await loader.call("POST", "/api/auth/login", json=wrong)).status == 401

    api_key = await loader.api_key(admin, Role.API_ADMIN)
    flows.secret("API key", api_key)
    flows.secret("API key secret", api_key.split("_", 2)[2])
    answer = await loader.call("POST", "/api/auth/token", json={"apiKey": api_key})
    assert answer.status == 200, answer.body
    flows.secret("exchanged access token", answer.body["accessToken"])
    refreshed = await loader.call(
        "POST", "/api/auth/refresh", json={"refreshToken": answer.body["refreshToken"]}
    )
    assert refreshed.status == 200, refreshed.body
    flows.secret("refreshed access token", refreshed.body["accessToken"])
    flows.secret("refreshed refresh token", refreshed.body["refreshToken"])

    fn = {
        "name": "echo",
        "image": FUNCTION_IMAGE,
        "command": ["sh", "-c", ECHO],
        "env": {"FN_TOKEN": FUNCTION_SECRET},
    }
    flows.secret("function env value", FUNCTION_SECRET)
    assert (await loader.call("POST", "/api/functions", admin, json=fn)).status == 201
    answer = await loader.call("POST", "/api/functions/echo/invoke", admin, json={"q": 1})
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "succeeded", answer.body
    flows.run = answer.body


def key_material(stack: Stack, flows: Flows) -> None:
    """The keys the flows used, in the forms a log could show them."""
    fragment = (stack.api_dir / "key_fragment").read_bytes()
    device_key = crypto.api_key(ADMIN[0], ADMIN[1], FINGERPRINT)
    keys = {
        "key fragment": fragment,
        "archive key": hashlib.sha256(fragment).digest(),
        "archive key (core)": crypto.archive_key(fragment),
        "resource key": crypto.resource_key(),
        "device API key": device_key,
    }
    private = signing_key.load_or_create(stack.tmp / "state", FINGERPRINT).private
    keys["signing key"] = private.private_bytes_raw()
    for what, raw in keys.items():
        flows.secret(f"{what} (hex)", raw.hex())
        flows.secret(f"{what} (base64)", base64.b64encode(raw).decode())
        flows.secret(f"{what} (base64url)", base64.urlsafe_b64encode(raw).decode().rstrip("="))
    for name, value in CDN_KEYS.items():
        if name.endswith("secret"):
            flows.secret(f"CDN {name}", value)
    flows.secret("upstream JWT secret", stack.jwt_secret)
    flows.secret("admin password", ADMIN[1])
    flows.secret("operator password", OPERATOR[1])


# -- metrics ------------------------------------------------------------------------


async def test_each_series_moves_by_what_the_flows_did(loader: Loader) -> None:
    flows = Flows()
    seen: list[Samples] = []

    async def baseline(admin: str) -> None:
        seen.append(await loader.scrape(admin))

    await drive(loader, flows, before=baseline)
    assert (await loader.call("GET", "/no/such/route/m.bin")).status == 404
    after = await loader.scrape(flows.admin)
    delta = Delta(seen[0], after)

    size = len(flows.loaded)
    assert delta("edgeloader_load_bytes_total", source="cdn") == size
    assert delta("edgeloader_load_bytes_total", source="cache") == size
    assert delta("edgeloader_upload_bytes_total") == len(flows.uploaded)
    assert delta("edgeloader_unlock_total", outcome="ready") == 1
    assert delta("edgeloader_unlock_total", outcome="error") == 0

    assert delta("edgeloader_auth_events_total", event="login_denied") == 1
    assert delta("edgeloader_auth_events_total", event="login_ok") == 1  # the unlock's
    assert delta("edgeloader_auth_events_total", event="key_created") == 1
    assert delta("edgeloader_auth_events_total", event="token_ok") == 1
    assert delta("edgeloader_auth_events_total", event="refresh_ok") == 1

    assert delta("edgeloader_function_runs_total", function="echo", status="succeeded") == 1
    assert delta("edgeloader_function_run_duration_seconds_count", function="echo") == 1
    took = delta("edgeloader_function_run_duration_seconds_sum", function="echo")
    assert took == pytest.approx(flows.run["durationMs"] / 1000, abs=0.002)
    assert after.get("edgeloader_function_queue_depth", function="echo") == 0

    load = {"route": "/load/{filename}", "method": "POST", "status": "200"}
    assert delta("edgeloader_http_requests_total", **load) == 2
    assert delta("edgeloader_http_request_duration_seconds_count", route="/load/{filename}") == 2
    upload = {"route": "/upload/{filename}", "method": "POST", "status": "200"}
    assert delta("edgeloader_http_requests_total", **upload) == 1
    failed = {"route": "/api/auth/login", "method": "POST", "status": "401"}
    assert delta("edgeloader_http_requests_total", **failed) == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert delta("edgeloader_http_requests_total", **unmatched) == 1
    # Label values are patterns, never a raw path or a resource's name.
    assert not any("m.bin" in value for value in after.labels("edgeloader_http_"))


async def test_integrity_failures_are_counted_by_reason(make_stack: Any, tmp_path: Path) -> None:
    stack: Stack = await make_stack()
    _, public = generate_keypair(tmp_path / "publisher")
    url = await stack.start_loader(stack.settings(auth_mode="required", publisher_key=public))
    loader = Loader(stack, url)
    admin = await loader.token()
    await device_login(loader, admin)
    stack.publish("m.bin", pattern(1000))
    before = await loader.scrape(admin)
    for _ in range(2):  # no manifest is published: unavailable
        answer = await loader.call("POST", "/load/m.bin", admin, json={"folder": stack.bucket})
        assert answer.status == 502
        assert answer.body["detail"].startswith("integrity: unavailable")
    delta = Delta(before, await loader.scrape(admin))
    assert delta("edgeloader_integrity_failures_total", reason="unavailable") == 2
    assert delta("edgeloader_integrity_failures_total", reason="hash") == 0


async def test_metrics_take_an_admin_token_or_api_key(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    loader = Loader(stack, await stack.start_loader(stack.settings(auth_mode="required")))
    admin = await loader.token(ADMIN)
    operator = await loader.token(OPERATOR)
    admin_key = await loader.api_key(admin, Role.ADMIN)
    api_admin_key = await loader.api_key(admin, Role.API_ADMIN)
    operator_key = await loader.api_key(admin, Role.OPERATOR)

    assert (await loader.call("GET", "/metrics")).status == 401
    assert (await loader.call("GET", "/metrics", "elk_0123456789abcdef_wrong")).status == 401
    assert (await loader.call("GET", "/metrics", "not-a-token")).status == 401
    assert (await loader.call("GET", "/metrics", operator)).status == 403
    assert (await loader.call("GET", "/metrics", operator_key)).status == 403
    samples = await loader.scrape(admin)
    assert samples.get("edgeloader_auth_events_total", event="key_created") == 3
    await loader.scrape(admin_key)
    scraped = await loader.scrape(api_admin_key)
    # Every valid key counts, the Operator's too (refused by its role after).
    assert scraped.get("edgeloader_auth_events_total", event="key_bearer_ok") == 3

    # OpenMetrics on request, for scrapers that ask for it.
    answer = await loader.call(
        "GET", "/metrics", admin_key, headers={"Accept": "application/openmetrics-text"}
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.body.rstrip().endswith(b"# EOF")

    # An API key works only here: elsewhere a bearer is an access token.
    assert (await loader.call("GET", "/api/runs", admin_key)).status == 401
    assert (await loader.call("GET", "/api/events", admin_key)).status == 401

    # A revoked key stops working at once.
    key_id = admin_key.split("_")[1]
    assert (await loader.call("DELETE", f"/api/keys/{key_id}", admin)).status == 200
    assert (await loader.call("GET", "/metrics", admin_key)).status == 401


async def test_the_boxs_resources_are_read_at_each_scrape(
    make_stack: Any, clean_engine: EngineService, function_image: str
) -> None:
    stack: Stack = await make_stack()
    settings = stack.settings(auth_mode="required", docker_host=clean_engine.docker_host)
    loader = Loader(stack, await stack.start_loader(settings))
    admin = await loader.token()

    def gauge(samples: Samples, name: str) -> float:
        return samples.values[(name, frozenset())]  # present, not defaulted

    idle = await loader.scrape(admin)
    disk = shutil.disk_usage(settings.state_dir)
    assert gauge(idle, "edgeloader_state_size_bytes") == disk.total
    assert 0 < gauge(idle, "edgeloader_state_free_bytes") <= disk.total
    limit = gauge(idle, "edgeloader_model_store_limit_bytes")
    assert limit == settings.functions.model_memory_max
    assert gauge(idle, "edgeloader_run_folders_bytes") == 0
    assert gauge(idle, "edgeloader_run_folders_limit_bytes") == 0

    # A run writes 1 MiB into its 4 MiB folder, then waits for the test.
    script = (
        "head -c 1048576 /dev/zero > fill.bin && touch filled; "
        "while [ ! -e go ]; do sleep 0.05; done"
    )
    fn = {
        "name": "fill",
        "image": function_image,
        "command": ["sh", "-c", script],
        "limits": {"diskMb": 4, "timeoutS": 120},
    }
    assert (await loader.call("POST", "/api/functions", admin, json=fn)).status == 201
    answer = await loader.call("POST", "/api/functions/fill/invoke?async=true", admin, json={})
    assert answer.status == 202, answer.body
    run_id = str(answer.body["runId"])
    folder = settings.functions_dir / "runs" / run_id / "app"

    async def filled() -> bool:
        return (folder / "filled").exists()

    await wait_for(filled, 60, failure="the run did not fill its folder")
    busy = await loader.scrape(admin)
    assert MiB <= gauge(busy, "edgeloader_run_folders_bytes") < 2 * MiB
    assert gauge(busy, "edgeloader_run_folders_limit_bytes") == 4 * MiB

    (folder / "go").touch()

    async def ended() -> bool:
        run = await loader.call("GET", f"/api/runs/{run_id}", admin)
        return RunStatus(run.body["status"]).final

    await wait_for(ended, 60, failure="the run did not end")
    run = (await loader.call("GET", f"/api/runs/{run_id}", admin)).body
    assert run["status"] == "succeeded", run

    async def folder_gone() -> bool:
        done = await loader.scrape(admin)
        return gauge(done, "edgeloader_run_folders_limit_bytes") == 0

    await wait_for(folder_gone, 60, failure="the ended run's folder is still counted")
    assert gauge(await loader.scrape(admin), "edgeloader_run_folders_bytes") == 0


# -- the event stream ------------------------------------------------------------------


@dataclass
class Stream:
    """An open ``/api/events`` response, read one SSE message at a time."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)

    async def line(self) -> str:
        raw = await self.response.content.readline()
        assert raw, "the stream ended without an end event"
        return raw.decode().rstrip("\n")

    async def heartbeat(self) -> str:
        """The next line that is not blank: a comment, if no event came."""
        while not (line := await self.line()):
            pass
        return line

    async def next(self) -> tuple[str, JSON]:
        name, data = "", ""
        while True:
            line = await self.line()
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and name:
                return name, json.loads(data)

    async def until(self, name: str) -> list[tuple[str, JSON]]:
        """Every message up to and including the first ``name``."""
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if message[0] == name:
                return seen


@contextlib.asynccontextmanager
async def events(loader: Loader, token: str) -> AsyncIterator[Stream]:
    response = await loader.http.get(
        loader.url + "/api/events", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield Stream(response)
    finally:
        response.close()


def streams_open(loader: Loader) -> int:
    runner = loader.stack.runners[-1]
    return runner.app[SERVICES].events.subscribers


async def test_the_stream_follows_an_unlock_in_order_and_ends_when_the_client_leaves(
    loader: Loader,
) -> None:
    admin = await loader.token()
    async with events(loader, admin) as stream:
        name, snapshot = await stream.next()
        assert (name, snapshot["state"]) == ("unlock", "idle")
        answer = await loader.call("POST", "/unlock", admin, json=CREDS)
        assert answer.status == 200, answer.body
        states: list[str] = []
        progress: list[tuple[int, int]] = []
        while not states or states[-1] not in ("ready", "error"):
            name, data = await stream.next()
            if name != "unlock":
                continue
            assert set(data) == {"state", "error", "bytesDone", "bytesTotal", "images"}
            if not states or states[-1] != data["state"]:
                states.append(data["state"])
            progress.append((data["bytesDone"], data["bytesTotal"]))
        assert states == UNLOCK_STATES
        done = [d for d, _ in progress]
        assert done == sorted(done)
        assert progress[-1][0] == progress[-1][1] > 0
        assert data["error"] is None
        assert (await loader.call("GET", "/unlock/status", admin)).body == data
        assert streams_open(loader) == 1

    async def closed() -> bool:
        return streams_open(loader) == 0

    await wait_for(closed, 30, failure="the stream outlived its client")
    samples = await loader.scrape(admin)
    assert samples.get("edgeloader_event_streams") == 0


async def test_run_events_show_queued_running_and_the_end(loader: Loader) -> None:
    admin = await loader.token()
    fn = {"name": "echo", "image": FUNCTION_IMAGE, "command": ["sh", "-c", ECHO]}
    assert (await loader.call("POST", "/api/functions", admin, json=fn)).status == 201
    operator = await loader.token(OPERATOR)
    async with events(loader, operator) as stream:
        await stream.next()  # the unlock's state
        answer = await loader.call("POST", "/api/functions/echo/invoke", admin, json={})
        assert answer.status == 200, answer.body
        run = answer.body
        seen: list[JSON] = []
        while not seen or seen[-1]["status"] in ("queued", "running"):
            name, data = await stream.next()
            assert name == "run"
            seen.append(data)
    assert [s["status"] for s in seen] == ["queued", "running", "succeeded"]
    fields = ["runId", "function", "status", "exitCode", "error", "queuedAt", "startedAt"]
    fields += ["finishedAt", "durationMs"]
    assert seen[-1] == {k: run[k] for k in fields}
    assert all(s["runId"] == run["runId"] for s in seen)


async def test_security_events_reach_admins_only_and_every_stream_ends_with_the_service(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack()
    loader = Loader(stack, await stack.start_loader(stack.settings(auth_mode="required")))
    admin = await loader.token(ADMIN)
    operator = await loader.token(OPERATOR)
    second = await loader.pair(ADMIN)
    async with events(loader, admin) as admins, events(loader, operator) as operators:
        assert (await admins.next())[0] == "unlock"
        assert (await operators.next())[0] == "unlock"
        # A refresh token used twice: its family is revoked, admins are told.
        old = second["refreshToken"]
        assert (
            await loader.call("POST", "/api/auth/refresh", json={"refreshToken": old})
        ).status == 200
        assert (
            await loader.call("POST", "/api/auth/refresh", json={"refreshToken": old})
        ).status == 401
        # An identity past its free failures: throttled, admins are told.
        wrong = {"email": "guess@example.org", "password": "wrong"}
        statuses = [
            (await loader.call("POST", "/api/auth/login", json=wrong)).status for _ in range(6)
        ]
        assert statuses == [401] * 5 + [429]

        await stack.runners.pop().cleanup()  # the service stops

        admin_saw = await admins.until("end")
        operator_saw = await operators.until("end")
    kinds = [data["kind"] for name, data in admin_saw if name == "security"]
    assert kinds == ["refresh-reuse", "throttled"]
    reuse, throttled = (data for name, data in admin_saw if name == "security")
    assert reuse["subject"] == f"user:{ADMIN[0]}"
    assert throttled["subject"] == "user:guess@example.org"
    assert throttled["retryAfter"] > 0
    assert admin_saw[-1] == ("end", {"reason": "service stopping"})
    assert operator_saw == [("end", {"reason": "service stopping"})]


async def test_the_stream_needs_a_token_beats_and_ends_when_it_is_revoked(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack()
    settings = stack.settings(auth_mode="required", events_heartbeat=0.2)
    loader = Loader(stack, await stack.start_loader(settings))
    assert (await loader.call("GET", "/api/events")).status == 401
    pair = await loader.pair(OPERATOR)
    token = pair["accessToken"]
    async with events(loader, token) as stream:
        await stream.next()
        # Nothing happens: heartbeats keep it open.
        assert await stream.heartbeat() == ": heartbeat"
        assert await stream.heartbeat() == ": heartbeat"
        answer = await loader.call(
            "POST", "/api/auth/logout", token, json={"refreshToken": pair["refreshToken"]}
        )
        assert answer.status == 200, answer.body
        assert await stream.until("end") == [("end", {"reason": "token revoked"})]


async def test_streams_are_capped(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    settings = stack.settings(auth_mode="required", events_max_streams=1)
    loader = Loader(stack, await stack.start_loader(settings))
    async with events(loader, await loader.token(OPERATOR)) as stream:
        await stream.next()
        refused = await loader.call("GET", "/api/events", await loader.token(ADMIN))
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) > 0


async def test_one_caller_cannot_take_every_stream(make_stack: Any) -> None:
    """An operator opening more streams than its share ends its own oldest;
    an admin still gets one (docs/events.md, "Limits")."""
    stack: Stack = await make_stack()
    settings = stack.settings(
        auth_mode="required", events_max_streams=8, events_max_streams_per_caller=3
    )
    loader = Loader(stack, await stack.start_loader(settings))
    operator = await loader.token(OPERATOR)
    async with contextlib.AsyncExitStack() as opened:
        mine = [await opened.enter_async_context(events(loader, operator)) for _ in range(5)]
        for stream in mine[:2]:
            ended = (await stream.until("end"))[-1]
            assert "newer stream" in ended[1]["reason"]
        assert streams_open(loader) == 3
        async with events(loader, await loader.token(ADMIN)) as admin:
            name, _ = await admin.next()
            assert name == "unlock"
            assert streams_open(loader) == 4


# -- request ids and logs ------------------------------------------------------------


@contextlib.contextmanager
def captured_logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every record of this process, at DEBUG, in both formats (as
    ``edgeloader serve`` writes them, with redaction and ids)."""
    text, jsonl = io.StringIO(), io.StringIO()
    handlers = [logs.handler("text", text), logs.handler("json", jsonl)]
    root = logging.getLogger()
    level = root.level
    quiet = {name: logging.getLogger(name).level for name in ("botocore", "aiobotocore")}
    root.setLevel(logging.DEBUG)
    for name in quiet:  # as logs.configure does
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield text, jsonl
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


async def test_request_ids_are_taken_when_safe_created_otherwise_and_echoed(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack()
    loader = Loader(stack, await stack.start_loader(stack.settings(auth_mode="required")))
    with captured_logs() as (_, jsonl):
        mine = "req-2f6c.a:b+c/d=e_f"
        answer = await loader.call("GET", "/health", headers={"X-Request-ID": mine})
        assert answer.headers["X-Request-ID"] == mine
        created = set()
        bad_ids = ("x" * 129, "has space", "semi;colon", "<script>", "")
        for bad in bad_ids:
            answer = await loader.call("GET", "/health", headers={"X-Request-ID": bad})
            assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"]), bad
            created.add(answer.headers["X-Request-ID"])
        answer = await loader.call("GET", "/api/runs")  # an error answer names its request too
        assert answer.status == 401
        created.add(answer.headers["X-Request-ID"])
        assert len(created) == len(bad_ids) + 1  # each one new
        answer = await loader.call("GET", "/no/such/route", headers={"X-Request-ID": "r-404"})
        assert (answer.status, answer.headers["X-Request-ID"]) == (404, "r-404")
    records = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    access = [r for r in records if r["logger"] == "aiohttp.access" and "/health" in r["message"]]
    assert mine in [r.get("request_id") for r in access]
    assert "r-404" in [r.get("request_id") for r in records]


async def test_no_log_line_holds_a_secret_and_runs_log_their_id(loader: Loader) -> None:
    flows = Flows()
    with captured_logs() as (text, jsonl):
        await drive(loader, flows)
        stream_id = "events-rid-1"
        answer = await loader.call(
            "GET", "/no/such/route", flows.admin, headers={"X-Request-ID": stream_id}
        )
        assert answer.status == 404
    key_material(loader.stack, flows)
    text_lines, json_lines = text.getvalue().splitlines(), jsonl.getvalue().splitlines()
    assert len(json_lines) > 50  # the flows did log
    jwt = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}")
    for form, lines in (("text", text_lines), ("json", json_lines)):
        for line in lines:
            assert not jwt.search(line), f"a JWT in a {form} log line: {line}"
            for what, secret in flows.secrets.items():
                assert secret not in line, f"the {what} in a {form} log line: {line}"

    # Every line of the run's audit carries its run id; the request's, its request id.
    records = [json.loads(line) for line in json_lines]
    run_id = flows.run["runId"]
    ended = [r for r in records if r.get("audit", {}).get("action") == "function.invoke"]
    assert ended
    assert all(r.get("run_id") == run_id for r in ended)
    assert all(r.get("request_id") for r in ended)
    assert any(f"run_id={run_id}" in line for line in text_lines)
    assert any(r.get("request_id") == stream_id for r in records)
