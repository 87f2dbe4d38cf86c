"""Components run as their own Python processes, for measurements that must
not share a process (or a GIL) with the caller."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.harness.net import HarnessError

#: The repository, so that ``python -m tests.support...`` works from anywhere.
REPO_ROOT = Path(__file__).resolve().parents[3]
#: Variables the loader reads besides ``EDGELOADER_*``; a child sets its own.
LOADER_VARS = ("RESOURCE_API_URL", "IMAGES_PATH", "API_VERSION", "DOCKER_HOST", "TMPDIR")


@dataclass
class Child:
    """A Python subprocess in its own session (Ctrl-C reaches only the parent)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
            raise HarnessError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every loader setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EDGELOADER_") and k not in LOADER_VARS
    }
    return env | extra


def spawn(
    name: str,
    args: list[str],
    env: dict[str, str],
    logs: Path,
    cleanup: contextlib.ExitStack,
    launcher: Sequence[str] = (),
) -> Child:
    """``python ARGS`` with its output in ``logs/NAME.log``, stopped by
    ``cleanup``; ``launcher`` is a command that execs it (``unshare -m``)."""
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [*launcher, sys.executable, *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name, process, log_path)
    cleanup.callback(child.stop)
    return child
