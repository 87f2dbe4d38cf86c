"""Warm functions on each engine: containers kept between invokes, serving
them over a unix socket (docs/functions.md, "Warm functions").

The handler is ``examples/warm-echo/handler.c``, built static here and
copied into the busybox base image by the loader's own build route, as
the docs tell a newcomer to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.engines import EngineService
from tests.support.functions import BASE_IMAGE, Api, build_form
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import wait_for
from tests.support.harness.processes import REPO_ROOT
from tests.support.stack import ADMIN, Stack

HANDLER_SOURCE = REPO_ROOT / "examples" / "warm-echo" / "handler.c"
DOCKERFILE = f"FROM {BASE_IMAGE}\nCOPY handler /handler\n"
WARM = {"max": 1, "idleS": 60}


@pytest.fixture(scope="session")
def handler(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("warm") / "handler"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(out), str(HANDLER_SOURCE)], check=True, timeout=120
    )
    return out.read_bytes()


def warm_context(handler: bytes) -> bytes:
    """The build context: the Dockerfile and the handler, executable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = (("Dockerfile", DOCKERFILE.encode(), 0o644), ("handler", handler, 0o755))
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def build_warm(api: Api, name: str, handler: bytes, **spec: Any) -> dict[str, Any]:
    context = warm_context(handler)
    fields = {"command": ["/handler"], "warm": WARM, **spec}
    form = build_form(context, fields)
    status, body, _ = await api.call("POST", f"/api/functions/{name}/build", api.admin, data=form)
    assert status in (200, 201), body
    return body  # type: ignore[no-any-return]


def warm_containers(engine: EngineService, function: str | None = None) -> list[str]:
    label = "edgeloader.warm"
    filters = quote(json.dumps({"label": [label]}))
    status, body = engine.request("GET", f"/v1.41/containers/json?all=true&filters={filters}")
    assert status == 200, body
    found = json.loads(body)
    return [
        str(c["Id"])
        for c in found
        if function is None or (c.get("Labels") or {}).get("edgeloader.function") == function
    ]


async def test_thirty_invokes_are_served_by_one_container(
    api: Api, engine: EngineService, handler: bytes
) -> None:
    await build_warm(api, "echo", handler)
    runs = [await api.invoke("echo", {"n": n}) for n in range(30)]
    for n, run in enumerate(runs):
        assert run["status"] == "succeeded", run
        assert run["result"]["n"] == n + 1  # one handler counted them all
        assert run["result"]["runId"] == run["runId"]
        assert run["coldStart"] is (n == 0)
    assert len({run["result"]["token"] for run in runs}) == 1
    assert len(warm_containers(engine, "echo")) == 1
    # Each run's output is what was written during it (docs/functions.md
    # says how a line printed just before an answer may come late).
    for n in (5, 29):
        stdout = (await api.get(f"/api/runs/{runs[n]['runId']}/logs"))["stdout"]
        assert f"invoke {n + 1}, run {runs[n]['runId']}\n" in stdout
        assert f"invoke {n + 2}," not in stdout
    stats = await api.get("/api/functions/echo/stats")
    assert (stats["coldStarts"], stats["runs"]) == (1, 30)
    assert all(run["cpuMs"] is not None for run in runs)


async def test_a_crashing_handler_fails_its_run_and_is_replaced(
    api: Api, engine: EngineService, handler: bytes
) -> None:
    await build_warm(api, "crashy", handler)
    first = await api.invoke("crashy", {"x": 1})
    crashed = await api.invoke("crashy", {"do": "crash"})
    assert crashed["status"] == "failed"
    assert "warm handler" in crashed["error"]
    after = await api.invoke("crashy", {"x": 2})
    assert after["status"] == "succeeded", after
    assert after["coldStart"] is True
    assert after["result"]["token"] != first["result"]["token"]
    failing = await api.invoke("crashy", {"do": "fail"})
    assert (failing["status"], failing["error"]) == (
        "failed",
        "warm handler answered 500: handler failed: asked to",
    )
    assert len(warm_containers(engine, "crashy")) == 1  # a 500 keeps the container


async def test_a_handler_past_its_timeout_is_killed_and_the_next_invoke_is_cold(
    api: Api, engine: EngineService, handler: bytes
) -> None:
    await build_warm(api, "slow", handler, limits={"timeoutS": 2})
    assert (await api.invoke("slow"))["status"] == "succeeded"
    hung = await api.invoke("slow", {"do": "sleep"})
    assert hung["status"] == "timeout", hung
    assert warm_containers(engine, "slow") == []
    again = await api.invoke("slow")
    assert (again["status"], again["coldStart"]) == ("succeeded", True)


@pytest.mark.parametrize("replacement", ["symlink", "file"])
async def test_a_socket_replaced_by_the_function_fails_the_run(
    api: Api, engine: EngineService, handler: bytes, tmp_path: Path, replacement: str
) -> None:
    """The handler swaps its socket for a link to another socket (one the
    loader could reach) or a plain file: the loader connects to nothing."""
    await build_warm(api, "swap", handler)
    assert (await api.invoke("swap"))["status"] == "succeeded"
    runs = tmp_path / "state" / "functions" / "runs"
    (folder,) = [p / "app" for p in runs.iterdir()]
    sock = folder / "function.sock"
    sock.unlink()
    if replacement == "symlink":
        decoy = tmp_path / "decoy.sock"
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(decoy))
        sock.symlink_to(decoy)
        os.lchown(sock, 65534, 65534)
    else:
        server = None
        sock.write_text("not a socket")
        os.chown(sock, 65534, 65534)
    try:
        run = await api.invoke("swap")
    finally:
        if server is not None:
            server.close()
    assert run["status"] == "failed", run
    assert "function.sock" in run["error"]
    assert warm_containers(engine, "swap") == []  # gone with its folder


async def test_an_update_drains_and_idle_containers_go(
    make_api: Any, engine: EngineService, handler: bytes
) -> None:
    api = await make_api()
    await build_warm(api, "drain", handler, warm={"max": 1, "idleS": 5})
    assert (await api.invoke("drain"))["status"] == "succeeded"
    (old,) = warm_containers(engine, "drain")
    await build_warm(api, "drain", handler, warm={"max": 1, "idleS": 5})  # version 2
    assert old not in warm_containers(engine, "drain")
    run = await api.invoke("drain")
    assert (run["version"], run["coldStart"]) == (2, True)

    async def idle_removed() -> bool:
        return warm_containers(engine, "drain") == []

    await wait_for(idle_removed, within=20)


async def test_warm_max_may_not_exceed_concurrency(api: Api) -> None:
    status, body, _ = await api.call(
        "POST",
        "/api/functions",
        api.admin,
        json={"name": "w", "image": BASE_IMAGE, "warm": {"max": 2}, "concurrency": 1},
    )
    assert status == 422
    assert "warm.max (2) must not exceed concurrency (1)" in body["detail"]


async def test_a_killed_loader_leaves_no_warm_container_after_its_restart(
    make_stack: Any, engine: EngineService, image: str, handler: bytes, tmp_path: Path
) -> None:
    stack: Stack = await make_stack()
    state = tmp_path / "loader-state"
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:

        async def start() -> tuple[Any, Api]:
            child, url = await start_loader_process(stack.api_url, state, tmp_path, cleanup, **env)
            api = Api(stack.http, url)
            api.admin = await api.login(ADMIN)
            return child, api

        child, api = await start()
        await build_warm(api, "left", handler)
        assert (await api.invoke("left"))["status"] == "succeeded"
        assert len(warm_containers(engine, "left")) == 1
        child.process.send_signal(signal.SIGKILL)
        child.process.wait(10)
        assert warm_containers(engine, "left"), "the engine keeps a dead loader's container"
        _, api = await start()

        async def removed() -> bool:
            return warm_containers(engine, "left") == []

        await wait_for(removed, within=30)
        assert (await api.invoke("left"))["coldStart"] is True
