"""``edgeloader fn`` against the real stack (the loader in ``required``
mode on a real engine), each command run as its own process: a deploy
file, the listings' columns, delete, ``invoke --async --wait`` and
``logs --follow`` of a run's live output."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.engines import EngineService
from tests.support.functions import Api
from tests.support.harness.net import wait_for
from tests.support.harness.processes import REPO_ROOT
from tests.support.stack import ADMIN, Stack


@dataclass
class Box:
    cli: Cli
    api: Api
    runs: Path  # FUNCTIONS_DIR/runs: each run's home, as the host sees it


@pytest.fixture
async def box(
    tmp_path: Path, make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str
) -> Box:
    stack = await make_stack()
    settings = stack.settings(auth_mode="required", docker_host=engine.docker_host)
    await stack.start_loader(settings)
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, stack.loader_url)
    await cli.login(ADMIN)
    api = Api(stack.http, stack.loader_url)
    api.admin = await api.login(ADMIN)
    return Box(cli, api, settings.functions_dir / "runs")


async def test_a_deploy_file_the_columns_and_delete(box: Box, image: str, tmp_path: Path) -> None:
    cli = box.cli
    spec = tmp_path / "greet.yml"
    spec.write_text(
        f"name: greet\nimage: {image}\n"
        "command: sh -c 'cat request.json > result.json; echo \"hi $WHO\"'\n"
        "env:\n  WHO: Ada\nlimits:\n  memoryMb: 64\n  timeoutS: 10\nqueue: 2\n"
    )
    first = await cli.ok("fn", "deploy", "-f", str(spec))
    assert first.text.startswith("deployed greet version 1 (image ")
    record = (await cli.ok("fn", "deploy", "-f", str(spec), "--timeout", "20", "--json")).json()
    assert (record["version"], record["envKeys"], record["queue"]) == (2, ["WHO"], 2)
    assert (record["limits"]["memoryMb"], record["limits"]["timeoutS"]) == (64, 20)

    bad = tmp_path / "bad.yml"
    bad.write_text(f"name: greet\nimage: {image}\nlimits:\n  memory: 64\n")
    refused = await cli.run("fn", "deploy", "-f", str(bad))
    assert refused.code == 2
    assert refused.one_error_line() == f"edgeloader: {bad}: unknown key limits.'memory'"

    header, row = (await cli.ok("fn", "list")).text.splitlines()
    assert header.split() == ["NAME", "VERSION", "IMAGE", "UPDATED"]
    assert row.split()[:3] == ["greet", "v2", image]
    assert header.index("IMAGE") == row.index(image)

    waited = await cli.ok("fn", "invoke", "greet", "--async", "--wait", "--data", '{"n": 1}')
    line, result = waited.text.splitlines()
    assert re.match(r"run \S+ of greet v2: succeeded in \d+ ms$", line), line
    assert result == '{"n": 1}'
    run = (await cli.ok("fn", "invoke", "greet", "--async", "--wait", "--json")).json()
    assert (run["status"], run["result"]) == ("succeeded", {})
    runs = (await cli.ok("fn", "runs", "greet")).text.splitlines()
    assert runs[0].split() == [
        "RUN", "ID", "FUNCTION", "VERSION", "STATUS", "TIME", "CPU", "MEMORY", "START", "QUEUED",
    ]  # fmt: skip
    assert runs[1].split()[:4] == [run["runId"], "greet", "v2", "succeeded"]
    assert len(runs) == 3

    deleted = await cli.ok("fn", "delete", "greet")
    assert deleted.text == "deleted greet (the records of its runs stay)\n"
    assert (await cli.ok("fn", "list")).text.split() == ["NAME", "VERSION", "IMAGE", "UPDATED"]
    assert len((await cli.ok("fn", "runs", "greet")).text.splitlines()) == 3
    again = await cli.run("fn", "delete", "greet")
    assert again.code == 1
    assert again.one_error_line() == "edgeloader: no function greet (HTTP 404)"


async def test_invoke_async_wait_fails_like_a_sync_invoke(box: Box, image: str) -> None:
    await box.cli.ok(
        "fn", "deploy", "fails", "--image", image, "--command", "sh -c 'echo broken >&2; exit 3'"
    )
    result = await box.cli.run("fn", "invoke", "fails", "--async", "--wait")
    assert result.code == 1
    line = result.one_error_line()
    assert re.match(r"edgeloader: run \S+ failed: exited with code 3: broken$", line), line
    usage = await box.cli.run("fn", "invoke", "fails", "--wait")
    assert usage.code == 2
    assert "--wait goes with --async" in usage.one_error_line()


async def _streams(api: Api) -> float:
    """``edgeloader_event_streams``: the event streams open now."""
    status, text, _ = await api.call("GET", "/metrics", api.admin)
    assert status == 200, text
    found = re.search(r"^edgeloader_event_streams (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


async def test_logs_follow_prints_the_output_as_it_comes(box: Box, image: str) -> None:
    # The run goes on at each step only once the test writes a file into its
    # folder: first once the follower's stream is open, then once the
    # follower has printed the first line (while the run still runs).
    script = (
        "while [ ! -e go ]; do sleep 0.05; done; echo line 1; "
        "while [ ! -e go2 ]; do sleep 0.05; done; echo line 2; echo done >&2"
    )
    await box.cli.ok(
        "fn", "deploy", "talk", "--image", image, "--command", f"sh -c '{script}'",
        "--timeout", "120",
    )  # fmt: skip
    run_id = (await box.cli.ok("fn", "invoke", "talk", "--async")).text.strip()
    folder = box.runs / run_id / "app"  # what the container sees at /app/functions

    async def running() -> bool:
        record = await box.api.get(f"/api/runs/{run_id}")
        return bool(record["status"] == "running" and folder.is_dir())

    await wait_for(running, 60)
    before = await _streams(box.api)
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeloader", "fn", "logs", run_id, "--follow",
        cwd=REPO_ROOT, env=box.cli.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert follower.stdout is not None
    assert follower.stderr is not None
    try:

        async def following() -> bool:
            return await _streams(box.api) > before

        await wait_for(following, 60)
        (folder / "go").touch()
        first = await asyncio.wait_for(follower.stdout.readline(), 60)
        assert first == b"line 1\n"
        assert (await box.api.get(f"/api/runs/{run_id}"))["status"] == "running"
        (folder / "go2").touch()
        rest, err = await asyncio.wait_for(
            asyncio.gather(follower.stdout.read(), follower.stderr.read()), 60
        )
        assert await follower.wait() == 0, err
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert (rest, err) == (b"line 2\n", b"done\n")

    # A run that has ended: its logs, at once.
    again = await box.cli.ok("fn", "logs", run_id, "--follow")
    assert (again.text, again.err) == ("line 1\nline 2\n", "done\n")
