"""Run folders: the files through which a function talks to the loader.

::

    FUNCTIONS_DIR/runs/RUN_ID/      root, 0700: the run's home
        app/                        the run's uid and group, 0700: mounted
                                    read-write at /app/functions, the
                                    working directory
            request.json            the invoke body, written before the start
            .env.config             KEY=VALUE lines: the function's env and ours
            result.json, logs.json  written by the function (optional)
        stdout, stderr              captured by the loader, capped

A container mounts only its own ``app`` folder, so one run never sees
another's. Whatever the function leaves in ``app`` is read with care: it
may have replaced a file with a symbolic link (to make the root-run loader
read a host file) or a FIFO (to make it block), so files are opened without
following links, without blocking, and only regular files, up to a size,
are read. The loader never writes into ``app`` after the start.

The methods are blocking; async code calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloader.errors import ConfigError, NotFound
from edgeloader.storage.files import atomic_write
from edgeloader.storage.state_dir import ensure_private_dir

log = logging.getLogger(__name__)

CONTAINER_DIR = "/app/functions"
REQUEST = "request.json"
ENV_CONFIG = ".env.config"
RESULT = "result.json"
LOGS = "logs.json"
RUN_ID = re.compile(r"[0-9a-f]{32}")


class BadOutput(Exception):
    """A file the function wrote cannot be used; the message says why."""


@dataclass(frozen=True)
class SavedOutput:
    stdout: str
    stderr: str
    logs: Any  # the parsed logs.json, or None


class RunFolders:
    def __init__(self, functions_dir: Path) -> None:
        self.root = functions_dir / "runs"

    def open(self) -> None:
        ensure_private_dir(self.root)

    def home(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise NotFound(f"no run {run_id}")
        return self.root / run_id

    def work(self, run_id: str) -> Path:
        """The folder the container mounts."""
        return self.home(run_id) / "app"

    def prepare(self, run_id: str, request: bytes, env: Mapping[str, str], uid: int) -> Path:
        """Creates the run's folders and input files, given to ``uid``."""
        home = self.home(run_id)
        home.mkdir(mode=0o700)
        work = home / "app"
        work.mkdir(mode=0o700)
        lines = "".join(f"{key}={value}\n" for key, value in env.items())
        atomic_write(work / REQUEST, request)
        atomic_write(work / ENV_CONFIG, lines.encode())
        try:
            for path in (work / REQUEST, work / ENV_CONFIG, work):
                os.chown(path, uid, uid)
        except PermissionError:
            raise ConfigError(
                f"cannot give the run folder to uid {uid}: function runs need the "
                "service to run as root"
            ) from None
        work.chmod(0o700)
        return work

    def read_result(self, run_id: str, limit: int) -> Any:
        """The parsed ``result.json``; None if the function wrote none."""
        data = _read_untrusted(self.work(run_id) / RESULT, limit)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise BadOutput(f"{RESULT} is not valid JSON: {exc}") from None

    def save_output(self, run_id: str, stdout: bytes, stderr: bytes) -> None:
        home = self.home(run_id)
        atomic_write(home / "stdout", stdout)
        atomic_write(home / "stderr", stderr)

    def read_output(self, run_id: str, limit: int) -> SavedOutput:
        home = self.home(run_id)
        try:
            stdout = (home / "stdout").read_bytes()
            stderr = (home / "stderr").read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"run {run_id} has no saved output: its container never ran, "
                "or its folder passed the retention period"
            ) from None
        try:
            raw = _read_untrusted(home / "app" / LOGS, limit)
            logs = None if raw is None else json.loads(raw)
        except (BadOutput, ValueError):
            logs = None
        return SavedOutput(_text(stdout), _text(stderr), logs)

    def remove(self, run_id: str) -> None:
        shutil.rmtree(self.home(run_id), ignore_errors=True)

    def exists(self, run_id: str) -> bool:
        return self.home(run_id).exists()


def _read_untrusted(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes, up to ``limit``; None if there is no file."""
    name = path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # ELOOP for a symbolic link, EACCES, ...
        raise BadOutput(f"{name} is not a readable regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadOutput(f"{name} is not a regular file")
        if info.st_size > limit:
            raise BadOutput(f"{name} is larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 16, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise BadOutput(f"{name} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
