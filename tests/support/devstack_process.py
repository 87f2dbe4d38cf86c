"""``make run``'s stack (tests/support/devstack.py) as its own process, as
``make run`` starts it but in a fresh state folder and on free ports; its
banner is what it printed once up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.engines import EngineKind
from tests.support.harness.processes import REPO_ROOT, clean_env

__all__ = ["DevStack", "dev_stack"]

_REST_HEADING = "Or over REST with curl:"


@dataclass
class DevStack:
    banner: list[str]
    state: Path

    def value(self, label: str) -> str:
        """A ``label: value`` line of the banner (``demo user``, ``password``)."""
        found = [line.split(":", 1)[1].strip() for line in self.banner if line.startswith(label)]
        assert len(found) == 1, (label, self.banner)
        return found[0]

    def section(self, heading: str) -> list[str]:
        """The lines after ``heading`` up to the next blank line after them."""
        start = self.banner.index(heading) + 2  # the heading, then a blank line
        end = self.banner.index("", start) if "" in self.banner[start:] else len(self.banner)
        return self.banner[start:end]

    def exports(self) -> list[str]:
        """The ``export`` lines the banner gives the second shell."""
        return [line for line in self.banner if line.startswith("export ")]

    def rest_lines(self) -> list[str]:
        """The curl lines, as a reader copies them (without the indent)."""
        return [line.strip() for line in self.section(_REST_HEADING)]


def _read_banner(process: subprocess.Popen[str], lines: list[str], done: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        # The banner ends with its REST section and a blank line.
        if _REST_HEADING in lines and lines[-1] == "" and lines[-2] != _REST_HEADING:
            done.set()
    done.set()


@contextlib.contextmanager
def dev_stack(engine: EngineKind, within: float = 240) -> Iterator[DevStack]:
    """``python -m tests.support.devstack`` with ``engine``, every port
    chosen free (the loader's too, so the banner says where it is)."""
    # A short path: podman refuses a run root over 50 characters.
    state = Path(tempfile.mkdtemp(prefix="devstack-"))
    log = (state.parent / f"{state.name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.devstack", "--state-dir", str(state),
         "--port", "0", "--api-port", "0", "--s3-port", "0", "--engine", engine],
        cwd=REPO_ROOT, env=clean_env(), text=True,
        stdout=subprocess.PIPE, stderr=log, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    done = threading.Event()
    threading.Thread(target=_read_banner, args=(process, lines, done), daemon=True).start()
    try:
        done.wait(within)
        if process.poll() is not None or _REST_HEADING not in lines:
            log.flush()
            tail = Path(log.name).read_text()[-3000:]
            raise AssertionError(f"make run's stack did not come up:\n{tail}")
        yield DevStack(lines, state)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the stack stops its engine on the way out
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
