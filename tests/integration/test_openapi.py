"""The OpenAPI document against the running stack (docs/openapi.md).

Schemathesis generates requests from ``GET /openapi.json`` and sends them
to a loader in the default ``required`` mode, with the reference Resource
API, moto's S3 and podman behind it: with an admin's token and without
one, data that fits the document and data that does not, a fixed number
of examples per operation (derandomised, so a run is repeatable). Every
answer must be documented (status and JSON schema), and none may be a
server error.

The one 5xx a handler means to give is 502, an upstream that failed;
each one seen must name its upstream or the failing operation, as
documented. The event stream is left out: it never ends.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.engines import EngineService, import_busybox_image
from tests.support.stack import ADMIN, Stack, pattern

#: Examples per operation, mode and caller; fixed (the env only lowers it
#: for a quick look while developing).
EXAMPLES = int(os.environ.get("EDGELOADER_SCHEMATHESIS_EXAMPLES", "20"))
EXCLUDED = {
    "GET /api/events": "an endless stream (docs/events.md); test_observability.py reads it",
}
#: No server error, every status and JSON body as documented; and the
#: documented headers and media types too.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    response_headers_conformance,
    content_type_conformance,
]
IMAGE = "localhost/edgeloader-openapi:1"
#: A 502 names the upstream or the operation that failed (docs/api.md);
#: the engine's refusals read "<operation> failed: <the engine's words>".
UPSTREAM_FAILURE = re.compile(
    r"CDN|Resource API|container engine|decryption failed|^integrity: |^[a-z ]+ failed: "
)


@dataclass
class Tally:
    """What one run saw."""

    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    findings: list[str] = field(default_factory=list)
    bad_gateways: list[str] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Pass:
    """One sweep over the operations."""

    name: str
    headers: dict[str, str]
    modes: tuple[GenerationMode, ...]
    path_parameters: dict[str, str] | None = None


def schemathesis_config() -> schemathesis.Config:
    # 502 is a documented answer (an upstream failed), checked below by its
    # detail; any other 5xx is a server error.
    return schemathesis.Config.from_dict(
        {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502"]}}}
    )


def sweep(
    schema: Any, base_url: str, sweep_pass: Pass, tally: Tally, only: Callable[[str], bool]
) -> None:
    """Every operation ``only`` accepts, ``EXAMPLES`` times per mode."""
    with requests.Session() as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if label in EXCLUDED or not only(label):
                continue
            for mode in sweep_pass.modes:
                probe_operation(operation, label, mode, http, base_url, sweep_pass, tally)


def probe_operation(
    operation: Any,
    label: str,
    mode: GenerationMode,
    http: requests.Session,
    base_url: str,
    sweep_pass: Pass,
    tally: Tally,
) -> None:
    wanted = set(re.findall(r"\{(\w+)\}", label))
    fixed = {k: v for k, v in (sweep_pass.path_parameters or {}).items() if k in wanted}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def probe(case: Any) -> None:
        tally.requests += 1
        response = case.call(base_url=base_url, session=http, headers=sweep_pass.headers)
        tally.statuses[response.status_code] += 1
        tally.operations.add(label)
        where = f"{sweep_pass.name}, {mode.value}: {label}"
        if response.status_code == 502:
            detail = response.json().get("detail", "")
            if not UPSTREAM_FAILURE.search(detail):
                tally.bad_gateways.append(f"{where}: {detail}")
        try:
            case.validate_response(response, checks=CHECKS, headers=sweep_pass.headers)
        except FailureGroup as exc:
            tally.findings.append(f"{where}\n{exc}")

    try:
        probe()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): nothing to send.
        assert mode is GenerationMode.NEGATIVE, label


async def token_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(
        f"{url}/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}
    ) as resp:
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["accessToken"]
        return token


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, **kwargs: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        assert resp.status < 300, (method, url, resp.status, await resp.text())
        return await resp.json()


@pytest.fixture(scope="module")
def known_image(engine: EngineService) -> str:
    import_busybox_image(engine, IMAGE)
    return IMAGE


async def test_the_running_stack_answers_as_documented(
    make_stack: Callable[..., Any], engine: EngineService, known_image: str, tmp_path: Path
) -> None:
    stack: Stack = await make_stack()
    settings_ = stack.settings(
        auth_mode="required",
        docker_host=engine.docker_host,
        # /unlock answers 404 at once rather than starting a background unlock.
        images_path=tmp_path / "no-images.enc",
    )
    url = await stack.start_loader(settings_)
    http = stack.http
    token = await token_of(http, url)
    # The device logs in upstream, so that loads and uploads get past it.
    await call(http, "POST", f"{url}/login", token, json={"email": ADMIN[0], "password": ADMIN[1]})
    # Something real for the known-parameters pass.
    stack.publish("sample.bin", pattern(100_000))
    await call(
        http, "POST", f"{url}/api/functions", token, json={"name": "echo", "image": known_image}
    )
    run = await call(http, "POST", f"{url}/api/functions/echo/invoke", token, json={})
    key = await call(
        http,
        "POST",
        f"{url}/api/keys",
        token,
        json={"name": "openapi", "role": "Operator", "validity": "1h"},
    )
    async with http.get(f"{url}/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    schema = schemathesis.openapi.from_dict(document, config=schemathesis_config())

    bearer = {"Authorization": f"Bearer {token}"}
    both = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    passes = [
        (Pass("admin token", bearer, both), lambda label: True),
        (Pass("no token", {}, (GenerationMode.POSITIVE,)), lambda label: True),
        # The parameters that name something that exists; deletions last.
        (
            Pass(
                "known names",
                bearer,
                (GenerationMode.POSITIVE,),
                {
                    "filename": "sample.bin",
                    "name": "echo",
                    "run_id": run["runId"],
                    "key_id": key["id"],
                },
            ),
            lambda label: "{" in label and not label.startswith("DELETE"),
        ),
        (
            Pass(
                "known names, deleted",
                bearer,
                (GenerationMode.POSITIVE,),
                {"name": "echo", "key_id": key["id"]},
            ),
            lambda label: label.startswith("DELETE"),
        ),
    ]
    tally = Tally()
    started = time.monotonic()
    for sweep_pass, only in passes:
        await asyncio.to_thread(sweep, schema, url, sweep_pass, tally, only)
    took = time.monotonic() - started
    print(
        f"schemathesis: {len(tally.operations)} operations, {tally.requests} requests "
        f"in {took:.0f} s; statuses {dict(sorted(tally.statuses.items()))}"
    )
    documented = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    assert tally.operations == documented - set(EXCLUDED)
    assert not tally.findings, "\n\n".join(tally.findings[:10])
    assert not tally.bad_gateways, tally.bad_gateways[:10]
    assert 500 not in tally.statuses
