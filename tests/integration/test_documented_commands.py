"""The commands of README.md and docs/cli.md, run as written against
``make run``'s stack (tests/support/devstack.py, started as ``make run``
starts it, on podman, in a fresh state folder and on free ports).

Every ``sh`` block of the two files is run, in the order of the files, in
one working folder that holds the checkout's ``.venv`` (so
``.venv/bin/edgeloader`` works as in a clone) with ``.venv/bin`` on
``PATH`` (as docs/cli.md asks in a checkout) and a fresh ``HOME``. The
only substitution is the one the banner itself gives: its
``export EDGELOADER_URL=...`` line, run first in each shell. Prompts are
answered with the banner's demo user and password. A comment on the line
before a block speaks to this test:

- ``<!-- docs test: not run: REASON -->``: the block is not run, for REASON;
- ``<!-- docs test: $NAME is make run's demo password -->`` (or ``user``):
  the variable the block uses.

Each line must exit 0, or with the status its comment states
(``# exit 2: MESSAGE``, with MESSAGE the output); its output must match
what this test expects of its command. Every command of docs/cli.md's
table must be run by some line. The banner's curl lines run as printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.devstack import SAMPLE
from tests.support.devstack_process import DevStack, dev_stack
from tests.support.docshell import Step, run_lines
from tests.support.harness.processes import REPO_ROOT, clean_env

DOCS = ("README.md", "docs/cli.md")
BLOCK = re.compile(
    r"(?:^<!-- docs test: (?P<marker>.*?) -->\n)?^```(?P<info>[\w-]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
NOT_RUN = re.compile(r"not run: (?P<reason>\S.*)")
VARIABLE = re.compile(r"\$(?P<name>\w+) is make run's demo (?P<what>user|password)")
EXIT = re.compile(r"# exit (?P<code>\d+): (?P<message>.*)$")
CALL = re.compile(r"edgeloader(?P<options>(?: --json)*)(?P<words>(?: [a-z][a-z-]*)+)")


@dataclass
class Block:
    source: str
    lines: list[str]
    skipped: str = ""  # the reason it is not run
    variables: dict[str, str] = field(default_factory=dict)  # NAME: "user" or "password"


def blocks(name: str) -> list[Block]:
    """The ``sh`` blocks of a doc, continuation lines joined, comments and
    blank lines left out."""
    found = []
    for match in BLOCK.finditer((REPO_ROOT / name).read_text()):
        if match.group("info") != "sh":
            continue
        text = match.group("body").replace("\\\n", " ")
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        block = Block(f"{name}, the block of {lines[0]!r}", lines)
        marker = match.group("marker")
        if marker is not None:
            skipped, variable = NOT_RUN.fullmatch(marker), VARIABLE.fullmatch(marker)
            assert skipped or variable, f"{block.source}: a docs test comment it does not know"
            if skipped:
                block.skipped = skipped.group("reason")
            if variable:
                block.variables[variable.group("name")] = variable.group("what")
        found.append(block)
    return found


def documented_commands() -> set[str]:
    """The commands of docs/cli.md's table: ``login``, ``fn deploy``, …"""
    text = (REPO_ROOT / "docs/cli.md").read_text()
    table = text.split("| command | what it does | route |", 1)[1].split("\n\n", 1)[0]
    commands = set()
    for row in table.splitlines()[2:]:
        for usage in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            words = re.match(r"[a-z]+(?: [a-z]+)*(?![\w\\])", usage)
            assert words, row
            commands.add(words[0])
    return commands


COMMANDS = documented_commands()


def command_of(line: str) -> str:
    """The documented command a line runs (the longest that matches), or
    its first word when it runs none (a mistyped command)."""
    match = CALL.search(line)
    if match is None:
        return ""
    words = match.group("words").split()
    for n in range(len(words), 0, -1):
        if " ".join(words[:n]) in COMMANDS:
            return " ".join(words[:n])
    return words[0]


def expected(command: str, line: str, url: str, user: str) -> str:
    """What a documented line's output must hold (a regular expression,
    searched line by line)."""
    u, e = re.escape(url), re.escape(user)
    if "--async" in line:
        return r"\A\Z"  # the run id, into a variable
    if command == "keys create" and "--json" in line:
        return r"\A\Z"  # the key's id, into a variable
    if command == "prefetch":
        if "--wait" in line:
            return r"^prefetch models/\S+: done \(8\.0 MiB in the cache\)$"
        return r"^prefetch models/\S+: (queued|running|done)"
    lines = {
        "login": rf"^logged in to {u} as {e}, role Admin",
        "logout": rf"^logged out of {u}$",
        "load": r"^loaded models/\S+ \(8\.0 MiB\) into \S+$",
        "upload": r"^uploaded \S+ as models/\S+ \(8\.0 MiB\)$",
        "unlock": r"^unlock: ready, (loaded )?localhost/edgeloader-demo:latest",
        "images": r"^IMAGE +ID +SIZE .*\nlocalhost/edgeloader-demo:latest ",
        "fn deploy": r"^deployed \S+ version 1 \(image localhost/",
        "fn invoke": r'^run \w+ of \S+ v1: succeeded in \d+ ms\n\{"hello": "box"\}$',
        "fn logs": r'^\{"hello": "again"\}$',
        "fn runs": r"^RUN ID +FUNCTION .*(\n\w+ +\S+ +v1 +succeeded .*){2}",
        "fn list": r"^NAME +VERSION +IMAGE +UPDATED\n\S+ +v1 +localhost/",
        "fn describe": r"^  stats +2 runs: 2 succeeded",
        "fn delete": r"^deleted \S+ \(the records of its runs stay\)$",
        "keys list": r"^ID +NAME +ROLE +STATE .*\n\w+ +\S+ +CompanionPC +active ",
        "keys revoke": r"^revoked key \w+$",
        "audit": r"\A(.*\n){4}.* key-revoke .*\Z",  # the newest 5, the revoke last
        "completion": r"\A\Z",  # eval'd: the shell's completion is set up
    }
    if command == "doctor":
        if "| head -1" in line:
            return rf"\A\S+ +service +healthy at {u}\Z"
        return rf"^ok +service +healthy at {u}\n(?!(.*\n)*fail )"
    assert command in lines, f"no expected output for {line!r}: add it to this test"
    return lines[command]


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with dev_stack("podman") as running:
        yield running


def check(step: Step, stack: DevStack, cwd: Path) -> None:
    url = stack.exports()[0].split("=", 1)[1]
    documented = EXIT.search(step.line)
    if documented:
        assert (step.code, step.output) == (int(documented["code"]), documented["message"]), step
        return
    assert step.code == 0, step
    assert "Traceback" not in step.output, step
    command = command_of(step.line)
    pattern = expected(command, step.line, url, stack.value("demo user"))
    assert re.search(pattern, step.output, re.MULTILINE), (pattern, step)
    if command == "load":
        target = step.line.split(" -o ", 1)[1].split()[0]
        assert (cwd / target).read_bytes() == (stack.state / SAMPLE).read_bytes()


def test_every_block_runs_or_says_why_not_and_every_command_is_run() -> None:
    run: set[str] = set()
    for name in DOCS:
        for block in blocks(name):
            if not block.skipped:
                run |= {command_of(line) for line in block.lines}
    missing = COMMANDS - run
    assert not missing, f"documented commands that no runnable block runs: {sorted(missing)}"
    assert {"login", "fn deploy", "keys revoke", "completion"} <= COMMANDS  # the table was read


def test_the_documented_commands_run_as_written(stack: DevStack, tmp_path: Path) -> None:
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    (cwd / ".venv").symlink_to(REPO_ROOT / ".venv")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home), PATH=f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    env.pop("XDG_CONFIG_HOME", None)
    user, password = stack.value("demo user"), stack.value("password")
    answers = [
        (re.compile(r"Email(?: \[[^\]]*\])?: \Z"), user),
        (re.compile(r"Password: \Z"), password),
    ]
    ran = 0
    for name in DOCS:
        for block in blocks(name):
            if block.skipped:
                continue
            variables = {k: user if v == "user" else password for k, v in block.variables.items()}
            steps = run_lines(
                stack.exports() + block.lines, cwd=cwd, env=env | variables, answers=answers
            )
            assert len(steps) == len(block.lines) + len(stack.exports()), (block.source, steps)
            for step in steps[len(stack.exports()) :]:
                check(step, stack, cwd)
                ran += 1
            if name == "README.md":  # the first login's tokens, where its comment says
                assert (home / ".config" / "edgeloader" / "credentials.json").is_file()
    assert ran >= 25
    # What docs/cli.md's eval line is for: bash now completes edgeloader.
    completion = 'eval "$(edgeloader completion bash)"; complete -p edgeloader'
    [step] = run_lines([completion], cwd=cwd, env=env, answers=[])
    assert (step.code, step.output.rsplit(" ", 1)[-1]) == (0, "edgeloader"), step


def test_the_banner_s_curl_lines_run_as_printed(stack: DevStack, tmp_path: Path) -> None:
    lines = [line for line in stack.rest_lines() if not line.startswith("#")]
    steps = run_lines(lines, cwd=tmp_path, env=clean_env(HOME=str(tmp_path)), answers=[])
    assert [s.code for s in steps] == [0] * len(lines), steps
    assert "identical" in [s.output for s in steps], steps  # the load, compared
    assert '"state":' in steps[-1].output, steps[-1]
