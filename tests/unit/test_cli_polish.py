"""The command line's manners: a mistyped command names the closest one,
the shell completes the commands, output whose reader has gone ends
quietly, an unlock names its images, the audit's newest entries, and
``make run``'s banner prints the README's CLI lines."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloader.auth.store import AuditEntry, AuthStore
from edgeloader.cli import main
from edgeloader.cli.commands.unlock import ready_line
from edgeloader.cli.output import EXIT_OK, EXIT_USAGE, run_command
from edgeloader.services.unlock import loaded_images
from tests.support.devstack import CLI_LINES, DEMO_EMAIL, DEMO_PASSWORD, banner
from tests.support.harness.processes import REPO_ROOT

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["lod"], "edgeloader: unknown command 'lod' (did you mean 'load'?)"),
        (["prefech", "x"], "edgeloader: unknown command 'prefech' (did you mean 'prefetch'?)"),
        (["keys", "lst"], "edgeloader keys: unknown command 'lst' (did you mean 'list'?)"),
        (["fn", "invok"], "edgeloader fn: unknown command 'invok' (did you mean 'invoke'?)"),
        (["zzzz"], "edgeloader: unknown command 'zzzz' (see `edgeloader --help`)"),
    ],
)
def test_a_mistyped_command_names_the_closest(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_a_wrong_option_value_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "x", "--role", "Nobody"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("edgeloader keys create: argument --role: invalid choice: 'Nobody'")
    assert err.endswith("(see `edgeloader keys create --help`)\n")


def _complete(line: str) -> list[str]:
    """What bash offers for ``line`` once `edgeloader completion bash` is eval'ed."""
    words = line.split(" ")
    script = (
        'eval "$(edgeloader completion bash)"\n'
        f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_python_argcomplete edgeloader\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bash = shutil.which("bash")
    assert bash is not None
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [bash, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return sorted(word.strip() for word in done.stdout.splitlines() if word.strip())


def test_bash_completes_commands_subcommands_and_options() -> None:
    assert _complete("edgeloader ke") == ["keys"]
    assert _complete("edgeloader pre") == ["prefetch"]
    assert {"create", "list", "revoke"} <= set(_complete("edgeloader keys "))
    assert "--limit" in _complete("edgeloader audit --l")


def test_completion_code_for_each_shell(capsys: pytest.CaptureFixture[str]) -> None:
    for shell in ("bash", "zsh", "fish"):
        assert main(["completion", shell]) == EXIT_OK
        assert "edgeloader" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["completion", "tcsh-ish"])
    assert exited.value.code == EXIT_USAGE


def test_a_closed_pipe_is_silent_and_ok() -> None:
    # The reader is gone before the command writes: every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for argv in (["completion", "bash"], ["--help"], ["keys", "--help"]):
            done = subprocess.run(
                [sys.executable, "-m", "edgeloader", *argv],
                cwd=REPO_ROOT,
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            assert (done.returncode, done.stderr) == (0, b""), argv
    finally:
        os.close(write_end)


def test_run_command_takes_a_broken_pipe_as_done(capsys: pytest.CaptureFixture[str]) -> None:
    def reader_gone(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    assert run_command("edgeloader", reader_gone, argparse.Namespace()) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_an_unlock_names_the_images_it_loaded() -> None:
    messages = [
        "Loading layer 1/2",
        "Loaded image: localhost/app:1",
        "Loaded image ID: sha256:abc",
        "Loaded image: localhost/db:1",
        "Loaded image: localhost/app:1",
    ]
    assert loaded_images(messages) == ["localhost/app:1", "localhost/db:1"]
    loaded = {"state": "ready", "bytesTotal": 2 << 20, "images": ["localhost/app:1", "b:2"]}
    assert ready_line(loaded) == "unlock: ready, loaded localhost/app:1, b:2 (2.0 MiB decrypted)"
    already = {"state": "ready", "bytesTotal": 0, "images": ["localhost/app:1"]}
    assert ready_line(already) == "unlock: ready, localhost/app:1 already in the engine"
    older_service = {"state": "ready", "bytesTotal": 2 << 20}
    assert ready_line(older_service) == "unlock: ready (2.0 MiB decrypted)"


def test_the_audit_gives_the_newest_entries_oldest_first(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    try:
        for i in range(6):
            entry = AuditEntry(
                at=100.0 + i,
                subject="s",
                role="Admin",
                action=f"a{i}",
                route="r",
                resource="",
                outcome="ok",
            )
            store.add_audit(entry)
        assert [e.action for e in store.audit(0.0, 2)] == ["a0", "a1"]
        assert [e.action for e in store.audit(0.0, 2, newest=True)] == ["a4", "a5"]
        assert [e.action for e in store.audit(104.5, 5, newest=True)] == ["a5"]
        assert [e.action for e in store.audit(0.0, 100, newest=True)] == [f"a{i}" for i in range(6)]
    finally:
        store.close()


def _readme_cli_block() -> list[str]:
    """The lines of README.md's first ``sh`` block that runs the CLI."""
    text = (REPO_ROOT / "README.md").read_text()
    for block in text.split("```sh\n")[1:]:
        lines = block.split("```", 1)[0].splitlines()
        if lines and all(line.startswith(".venv/bin/edgeloader ") for line in lines):
            return lines
    raise AssertionError("README.md has no block of CLI lines")


def test_make_run_prints_the_demo_user_and_the_readme_s_cli_lines() -> None:
    sample = Path("/state/sample-model.bin")
    printed = banner("http://127.0.0.1:8080", sample, with_engine=True)
    assert f"demo user: {DEMO_EMAIL}" in printed
    assert f"password:  {DEMO_PASSWORD}" in printed
    start = printed.index(CLI_LINES[0])
    assert printed[start : start + len(CLI_LINES)] == list(CLI_LINES)
    assert _readme_cli_block() == list(CLI_LINES)
    # On another port, the line that points the CLI there comes first.
    elsewhere = banner("http://127.0.0.1:9999", sample, with_engine=True)
    assert elsewhere[elsewhere.index(CLI_LINES[0]) - 1] == (
        "export EDGELOADER_URL=http://127.0.0.1:9999"
    )
