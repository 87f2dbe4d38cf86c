"""The examples of docs/functions.md, run as the docs write them: the
greet function (a script on the busybox base image) and the warm echo
handler (examples/warm-echo), each built from its documented files with
its documented spec, then invoked with the documented body; and the greet
function deployed with the CLI from its documented deploy file."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cli import Cli
from tests.support.functions import Api, build_form
from tests.support.harness.processes import REPO_ROOT
from tests.support.stack import ADMIN

DOCS = REPO_ROOT / "docs" / "functions.md"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOCS.read_text())]


def block_starting(prefix: str, containing: str = "") -> str:
    found = [text for _, text in blocks() if text.startswith(prefix) and containing in text]
    assert len(found) == 1, f"docs/functions.md: {len(found)} blocks start with {prefix!r}"
    return found[0]


def curl_calls(script: str, route: str) -> list[list[str]]:
    """The curl commands of ``script`` (continuations joined) for ``route``."""
    joined = script.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        if line.startswith("curl ") and route in line:
            calls.append(shlex.split(line))
    return calls


def option(words: list[str], flag: str, prefix: str = "") -> str:
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]
    chosen = [v for v in values if v.startswith(prefix)]
    assert chosen, (flag, prefix, words)
    return chosen[0].removeprefix(prefix)


def shell(lines: list[str], folder: Path) -> None:
    """The documented shell lines, run in ``folder`` (the repository's
    files named by their path from its root)."""
    script = "set -e\n" + "\n".join(lines).replace("examples/", f"{REPO_ROOT}/examples/")
    subprocess.run(["sh", "-c", script], cwd=folder, check=True, timeout=120)


async def build_and_invoke(api: Api, example: str, folder: Path) -> Any:
    """Sends the build context the example's ``tar`` made in ``folder``
    with the spec of its documented build command, then invokes the
    function with the documented body."""
    build = curl_calls(example, "/build")[0]
    name = re.search(r"/api/functions/([\w.-]+)/build", " ".join(build)).group(1)  # type: ignore[union-attr]
    spec = json.loads(option(build, "-F", "spec="))
    tar = option(build, "-F", "context=@")
    form = build_form((folder / tar).read_bytes(), spec)
    status, body, _ = await api.call("POST", f"/api/functions/{name}/build", api.admin, data=form)
    assert status in (200, 201), body
    invoke = curl_calls(example, f"/api/functions/{name}/invoke")[0]
    request = json.loads(option(invoke, "-d"))
    return await api.invoke(name, request)


async def test_the_greet_example_runs_as_documented(api: Api, tmp_path: Path) -> None:
    (tmp_path / "greet.sh").write_text(block_starting("# greet.sh\n"))
    dockerfile = block_starting("FROM localhost/edgeloader-fn-busybox:latest\nCOPY greet.sh")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    example = block_starting("tar -cf greet.tar Dockerfile greet.sh\ncurl", "/invoke")
    shell(example.splitlines()[:1], tmp_path)
    run = await build_and_invoke(api, example, tmp_path)
    assert run["status"] == "succeeded", run
    assert run["result"] == {"greeting": "Hello, Ada"}  # what the docs show
    output = await api.get(f"/api/runs/{run['runId']}/logs")
    assert output["stdout"] == "Hello, Ada\n"
    assert output["logs"] == [{"level": "info", "message": "greeted Ada"}]


async def test_the_warm_example_runs_as_documented(api: Api, tmp_path: Path) -> None:
    example = block_starting("gcc -static -O2 -o handler examples/warm-echo/handler.c\n")
    steps = [line for line in example.splitlines() if not line.startswith(("curl", " ", "#"))]
    shell(steps, tmp_path)
    first = await build_and_invoke(api, example, tmp_path)
    assert (first["status"], first["coldStart"], first["result"]["n"]) == ("succeeded", True, 1)
    second = await api.invoke("echo", {"hello": 2})
    assert (second["coldStart"], second["result"]["n"]) == (False, 2)
    assert second["result"]["token"] == first["result"]["token"]


async def test_the_greet_deploy_file_runs_as_documented(api: Api, tmp_path: Path) -> None:
    folder = tmp_path / "greet"
    folder.mkdir()
    (folder / "greet.sh").write_text(block_starting("# greet.sh\n"))
    (folder / "Dockerfile").write_text(
        block_starting("FROM localhost/edgeloader-fn-busybox:latest\nCOPY greet.sh")
    )
    (folder / "greet.yml").write_text(block_starting("# greet.yml\n"))
    commands = block_starting("edgeloader fn deploy -f greet.yml\n").splitlines()
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, api.url)
    await cli.login(ADMIN)
    outputs = []
    for line in commands:
        if not line.startswith("edgeloader "):
            continue
        # The CLI runs from the repository: the documented files by their full path.
        words = [str(folder / w) if (folder / w).exists() else w for w in shlex.split(line)[1:]]
        outputs.append((await cli.ok(*words)).text.splitlines())
    assert outputs[0][0].startswith("deployed greet version 1 ")
    shown = [line.removeprefix("# ") for line in commands if line.startswith("# ")]
    assert re.fullmatch(r"run \S+ of greet v1: succeeded in \d+ ms", outputs[1][0]), outputs[1]
    assert re.fullmatch(r"run \S+ of greet v1: succeeded in \d+ ms", shown[0].replace("…", "0"))
    assert outputs[1][1] == shown[1] == '{"greeting": "Hello, Ada"}'
    record = await api.get("/api/functions/greet")
    assert (record["envKeys"], record["limits"]["memoryMb"], record["limits"]["timeoutS"]) == (
        ["GREETING"], 64, 10,
    )  # fmt: skip
