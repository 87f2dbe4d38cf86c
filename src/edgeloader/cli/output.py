"""The one voice of every edgeloader command line (the device's and the
publisher's): how a command fails, how it asks for a password, how it shows
progress.

- A failure is one line on stderr, ``PROG: message``, never a traceback.
- Exit codes: 0 success, 1 a failure while working, 2 bad usage (wrong
  arguments or configuration), 130 interrupted.
- A password is never an argument: it comes from stdin, an environment
  variable named by the command, or a prompt on a terminal.
- Progress shows in place on a terminal, as plain lines otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import TextIO

from edgeloader.errors import ConfigError, EdgeloaderError, InvalidRequest

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "Progress",
    "UsageError",
    "read_password",
    "run_command",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_MIB = 1024 * 1024

Command = Callable[[argparse.Namespace], int]


class UsageError(InvalidRequest):
    """Bad usage."""


def _os_message(exc: OSError | sqlite3.Error) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def run_command(prog: str, command: Command, args: argparse.Namespace) -> int:
    """Runs one subcommand under the convention above."""

    def fail(message: str, code: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return code

    try:
        return int(command(args))
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


class Progress:
    """``VERB done / total MiB (pct%)`` at every 5%: in place on a terminal,
    one line per step otherwise. Silent for work under ``min_bytes``."""

    def __init__(
        self, verb: str, total: int, *, stream: TextIO | None = None, min_bytes: int = 16 * _MIB
    ) -> None:
        self.verb = verb
        self.total = total
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._enabled = total >= min_bytes
        self._shown = -1
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        if not self._enabled:
            return
        step = self.done * 20 // self.total if self.total else 20
        if step == self._shown:
            return
        self._shown = step
        line = f"{self.verb} {self.done / _MIB:.0f} / {self.total / _MIB:.0f} MiB ({step * 5}%)"
        end = "" if self._tty else "\n"
        print(f"\r{line}" if self._tty else line, end=end, file=self._stream, flush=True)

    def close(self) -> None:
        if self._enabled and self._tty:
            print(file=self._stream)
