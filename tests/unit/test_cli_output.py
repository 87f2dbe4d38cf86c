"""The one CLI convention: exit codes, one-line failures, passwords, progress."""

from __future__ import annotations

import argparse
import io

import pytest

from edgeloader.cli.output import (
    EXIT_FAILURE,
    EXIT_USAGE,
    PLAIN_SECONDS,
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


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_fast_work_prints_its_last_line_only() -> None:
    out = io.StringIO()
    progress = Progress("copied", 8 << 20, stream=out, min_bytes=0, clock=Clock())
    for _ in range(8 * 16):  # 8 MiB in 64 KiB pieces, all within a moment
        progress.advance(64 << 10)
    progress.close()
    assert out.getvalue() == "copied 8 / 8 MiB (100%)\n"


def test_off_a_terminal_slow_work_prints_each_quarter_once() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress("copied", 20 << 20, stream=out, clock=clock)
    for _ in range(20):
        clock.now += 10  # a MiB every 10 s: every quarter is past the 5 s spacing
        progress.advance(1 << 20)
    progress.close()
    assert out.getvalue().splitlines() == [
        "copied 5 / 20 MiB (25%)",
        "copied 10 / 20 MiB (50%)",
        "copied 15 / 20 MiB (75%)",
        "copied 20 / 20 MiB (100%)",
    ]


def test_off_a_terminal_lines_are_spaced_in_time() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress("copied", 100 << 20, stream=out, clock=clock)
    clock.now += PLAIN_SECONDS  # the first quarter comes after the spacing: shown
    progress.update_to(30 << 20)
    clock.now += 1  # the next quarter 1 s later: not shown...
    progress.update_to(50 << 20)
    clock.now += PLAIN_SECONDS  # ...but the work past it is, once the spacing is over
    progress.update_to(60 << 20)
    progress.update_to(70 << 20)  # the same quarter again: nothing
    progress.update_to(100 << 20)  # the end: always, however soon
    assert out.getvalue().splitlines() == [
        "copied 30 / 100 MiB (30%)",
        "copied 60 / 100 MiB (60%)",
        "copied 100 / 100 MiB (100%)",
    ]


def test_work_seen_late_starts_where_it_is() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress("prefetch", 8 << 20, stream=out, min_bytes=0, initial=7 << 20, clock=clock)
    assert progress.done == 7 << 20
    clock.now += 60
    progress.update_to(7 << 20)  # the quarters it started past are not shown
    assert out.getvalue() == ""
    progress.update_to(8 << 20)
    assert out.getvalue() == "prefetch 8 / 8 MiB (100%)\n"


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
