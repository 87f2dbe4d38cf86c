"""The one voice of every edgeloader command line (the device's and the
publisher's): how a command fails, how it asks for a password, how it shows
progress.

- A failure is one line on stderr, ``PROG: message``, never a traceback.
- Exit codes: 0 success, 1 a failure while working, 2 bad usage (wrong
  arguments or configuration, an unknown command), 130 interrupted.
- Output whose reader has gone (``edgeloader doctor | head -1``) ends the
  command quietly, with 0: what the reader wanted, it has.
- A password is never an argument: it comes from stdin, an environment
  variable named by the command, or a prompt on a terminal.
- Progress (:class:`Progress`, the one renderer) is a bar with bytes, rate
  and ETA on a terminal (tqdm); otherwise a few plain lines: at each
  quarter, at most one per :data:`PLAIN_SECONDS`, and the last one.
- A client command's results (:class:`Console`) are plain lines on stdout,
  or with ``--json`` one JSON document per result; notes and progress go
  to stderr, and ``--json`` silences them.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import getpass
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TextIO

from tqdm import tqdm

from edgeloader.errors import ConfigError, EdgeloaderError, InvalidRequest

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PLAIN_SECONDS",
    "CommandParser",
    "Console",
    "Progress",
    "UsageError",
    "quiet_closed_output",
    "read_line",
    "read_password",
    "run_command",
    "table",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_MIB = 1024 * 1024
#: Off a terminal, progress lines are at least this far apart (the last one excepted).
PLAIN_SECONDS = 5.0
# name, percentage, bar, bytes done / total, elapsed < ETA, rate
_BAR = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}iB/{total_fmt}iB [{elapsed}<{remaining}, {rate_fmt}]"
)
# Bars are updated from the one thread that does the work: no monitor thread.
tqdm.monitor_interval = 0

Command = Callable[[argparse.Namespace], int]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Rows under a header line, each column as wide as its widest cell.
    The last column is not padded, so a long message does not leave trailing
    blanks. No rows: the header alone, so an empty listing still names its
    columns."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False))
        + ("  " if len(row) > 1 else "")
        + row[-1]
        for row in cells
    ]


class UsageError(InvalidRequest):
    """Bad usage."""


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, exit 2, and a mistyped
    command names the closest one:
    ``edgeloader: unknown command 'lod' (did you mean 'load'?)``.
    Subcommand parsers are of the same class, so ``edgeloader keys lst``
    is answered alike."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if (
            isinstance(action, argparse._SubParsersAction)
            and choices is not None
            and value not in choices
        ):
            names = [str(name) for name in choices]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see `{self.prog} --help`"
            self.exit(EXIT_USAGE, f"{self.prog}: unknown command {value!r} ({hint})\n")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        """Any other usage error is one line too, pointing at ``--help``
        instead of printing the usage."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _os_message(exc: OSError | sqlite3.Error) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def quiet_closed_output() -> None:
    """Points stdout and stderr at /dev/null once a reader has closed the
    pipe, so that nothing written later, nor the flush at exit, fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        # A stream that is no file (a test's buffer) has nothing to flush at exit.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def run_command(prog: str, command: Command, args: argparse.Namespace) -> int:
    """Runs one subcommand under the convention above."""

    def fail(message: str, code: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return code

    try:
        code = int(command(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the flush at exit
        return code
    except BrokenPipeError:
        quiet_closed_output()
        return EXIT_OK
    except (ConfigError, InvalidRequest) as exc:
        return fail(exc.detail, EXIT_USAGE)
    except EdgeloaderError as exc:
        return fail(exc.detail, EXIT_FAILURE)
    except (OSError, sqlite3.Error) as exc:  # a port in use, a folder we may not write...
        return fail(_os_message(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def read_password(
    *,
    from_stdin: bool,
    env_var: str | None = None,
    confirm: bool = False,
    stdin: TextIO | None = None,
) -> str:
    """The password from stdin's first line, ``$env_var`` or a terminal prompt."""
    stdin = stdin or sys.stdin
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif env_var and os.environ.get(env_var):
        password = os.environ[env_var]
    elif stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise UsageError("the passwords do not match")
    else:
        where = f", ${env_var}" if env_var else ""
        raise UsageError(f"no password: pass --password-stdin{where} or run on a terminal")
    if not password:
        raise UsageError("the password must not be empty")
    return password


def read_line(label: str, *, missing: str, default: str = "", stdin: TextIO | None = None) -> str:
    """One line typed at a terminal prompt (an email, never a secret). An
    empty answer takes ``default``; off a terminal the value is ``default``,
    or a usage error that says what to pass instead (``missing``)."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        if default:
            return default
        raise UsageError(missing)
    shown = f" [{default}]" if default else ""
    print(f"{label}{shown}: ", end="", file=sys.stderr, flush=True)
    value = stdin.readline().strip() or default
    if not value:
        raise UsageError(f"{label.lower()} must not be empty")
    return value


def _columns(stream: TextIO) -> int | None:
    """The terminal's width, or None when it reports none."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


class Progress:
    """Progress of work measured in bytes, the one renderer of every command.

    On a terminal: a bar with bytes, rate and ETA (tqdm), redrawn in place.
    Off a terminal (a log, a pipe): ``VERB done / total MiB (pct%)`` once a
    new quarter is reached, at most one line per :data:`PLAIN_SECONDS`, and
    always the line of the end; a few lines however big or fast the work.
    Silent for work under ``min_bytes`` and when ``enabled`` is false.
    ``total`` may be None (unknown): the bar then shows bytes and rate only.
    ``initial``: the bytes already done when the work is first seen (a job
    followed once it runs, a resumed download); they count as done but not
    in the rate, which is over the bytes seen moving.
    """

    def __init__(
        self,
        verb: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        min_bytes: int = 16 * _MIB,
        enabled: bool = True,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verb = verb
        self.total = total
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._enabled = enabled and (total is None or total >= min_bytes)
        self._clock = clock
        self._shown_at = clock()
        self._quarter = self._quarter_of(initial)
        self._bar: tqdm[NoReturn] | None = None
        self.done = initial
        if self._enabled and self._tty:
            # A terminal that reports no size (some pseudo-terminals) is taken as 80x24.
            width = _columns(self._stream)
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=verb,
                unit="iB",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                dynamic_ncols=width is not None,
                ncols=None if width is not None else 80,
                nrows=None if width is not None else 24,
                mininterval=0.1,
                miniters=1,
                leave=True,
                bar_format=_BAR if total else None,
            )

    def _quarter_of(self, done: int) -> int:
        return min(done * 4 // self.total, 4) if self.total else 0

    def advance(self, n: int) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int, total: int | None = None) -> None:
        """Sets the bytes done (and a total learnt late, as an unlock's)."""
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.bar_format = _BAR
        step_from, self.done = self.done, done
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(done - step_from)
            return
        if not self.total:
            return
        quarter = self._quarter_of(done)
        if quarter <= self._quarter:
            return
        now = self._clock()
        if quarter < 4 and now - self._shown_at < PLAIN_SECONDS:
            return
        self._quarter, self._shown_at = quarter, now
        percent = min(done * 100 // self.total, 100)
        line = f"{self.verb} {done / _MIB:.0f} / {self.total / _MIB:.0f} MiB ({percent}%)"
        print(line, file=self._stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own, above the bar when there is one."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Console:
    """Where a client command's results go: plain lines, or with ``--json``
    one JSON document per result on stdout. Notes and progress go to
    stderr; with ``--json`` there is no progress and no note."""

    def __init__(
        self, *, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def result(self, data: Any, text: str | Iterable[str] | None = None) -> None:
        """One result: ``data`` as JSON with ``--json``, else ``text``."""
        if self.json_mode:
            print(json.dumps(data, ensure_ascii=False), file=self._out, flush=True)
            return
        lines = [text] if isinstance(text, str) else list(text or ())
        for line in lines:
            print(line, file=self._out)
        self._out.flush()

    def note(self, text: str) -> None:
        if not self.json_mode:
            print(text, file=self._err, flush=True)

    def progress(
        self, verb: str, total: int | None, *, min_bytes: int = _MIB, initial: int = 0
    ) -> Progress:
        return Progress(
            verb,
            total,
            stream=self._err,
            min_bytes=min_bytes,
            enabled=not self.json_mode,
            initial=initial,
        )
