"""The one CLI convention: exit codes, one-line failures, passwords, progress."""

from __future__ import annotations

import argparse
import io

import pytest

from edgeloader.cli.output import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Progress,
    UsageError,
    read_password,
    run_command,
    table,
)
from edgeloader.errors import ConfigError, EngineError, UnsafeName


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("bad flag"), EXIT_USAGE),
        (ConfigError("RESOURCE_API_URL is required"), EXIT_USAGE),
        (UnsafeName("unsafe name"), EXIT_USAGE),
        (EngineError("engine down"), EXIT_FAILURE),
        (PermissionError(13, "Permission denied", "/state"), EXIT_FAILURE),
    ],
)
def test_failures_are_one_line_with_the_right_code(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(args: argparse.Namespace) -> int:
        raise error

    assert run_command("prog", command, argparse.Namespace()) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("prog: ")
    assert "Traceback" not in err


def test_success_passes_the_code_through() -> None:
    assert run_command("prog", lambda args: 0, argparse.Namespace()) == 0


def test_password_from_stdin_env_or_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_password(from_stdin=True, stdin=io.StringIO("s3cret\r\n")) == "s3cret"
    monkeypatch.setenv("PW_VAR", "from-env")
    assert read_password(from_stdin=False, env_var="PW_VAR", stdin=io.StringIO()) == "from-env"
    monkeypatch.delenv("PW_VAR")
    with pytest.raises(UsageError, match="--password-stdin, \\$PW_VAR"):
        read_password(from_stdin=False, env_var="PW_VAR", stdin=io.StringIO())
    with pytest.raises(UsageError, match="must not be empty"):
        read_password(from_stdin=True, stdin=io.StringIO("\n"))


def test_progress_prints_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress("copied", 20 << 20, stream=out)
    for _ in range(20):
        progress.advance(1 << 20)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "copied 1 / 20 MiB (5%)"
    assert lines[-1] == "copied 20 / 20 MiB (100%)"
    assert len(lines) == 20


def test_progress_is_silent_for_small_work() -> None:
    out = io.StringIO()
    progress = Progress("copied", 1000, stream=out)
    progress.advance(1000)
    progress.close()
    assert out.getvalue() == ""


def test_a_table_aligns_its_columns_under_a_header() -> None:
    lines = table(["NAME", "VERSION", "NOTE"], [["greet", 1, "ok"], ["long-name", 12, None]])
    assert lines == [
        "NAME       VERSION  NOTE",
        "greet      1        ok",
        "long-name  12       ",
    ]
    assert table(["ID", "NAME"], []) == ["ID  NAME"]
