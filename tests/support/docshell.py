"""Documented shell commands run as a reader runs them: each block's lines in
one ``bash`` on a pseudo-terminal (so prompts, progress bars and variables
set by one line behave as in a second shell), with every prompt answered,
and each line's exit status and output taken apart by a marker printed
after it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Step", "run_lines"]

_MARK = "@@docshell-step"
_MARKED = re.compile(rf"^{_MARK} (\d+) (\d+)$", re.MULTILINE)


@dataclass
class Step:
    """One documented line, its exit status, and what it printed (stdout
    and stderr together, as on a terminal)."""

    line: str
    code: int
    output: str


def _script(lines: list[str]) -> str:
    parts = []
    for index, line in enumerate(lines):
        parts.append(line)
        parts.append(f'__status=$?; printf "\\n{_MARK} {index} %d\\n" "$__status"')
    return "\n".join(parts) + "\n"


def run_lines(
    lines: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    answers: list[tuple[re.Pattern[str], str]],
    within: float = 150,
) -> list[Step]:
    """Runs ``lines`` in one ``bash`` whose terminal is a pseudo-terminal;
    a prompt that matches one of ``answers`` at the end of the output gets
    its answer typed. Returns a step per line that ran."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-c", _script(lines)],
        cwd=cwd,
        env=env,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    output = ""
    answered = 0  # where the output not yet searched for a prompt starts
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: bash and every child have closed the terminal
                break
            if not chunk:
                break
            output += chunk.decode(errors="replace")
            for prompt, answer in answers:
                if prompt.search(output, answered):
                    os.write(main, answer.encode() + b"\n")
                    answered = len(output)
                    break
        else:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"the documented lines ran over {within} s:\n{output[-3000:]}")
        process.wait(10)
    finally:
        os.close(main)
    return _steps(lines, output.replace("\r\n", "\n"))


def _steps(lines: list[str], output: str) -> list[Step]:
    steps = []
    start = 0
    for match in _MARKED.finditer(output):
        index, code = int(match.group(1)), int(match.group(2))
        printed = output[start : match.start()].rstrip("\n")
        steps.append(Step(lines[index], code, printed))
        start = match.end() + 1
    return steps
