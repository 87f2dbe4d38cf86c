"""Run folders: the files through which a function talks to the loader.

::

    FUNCTIONS_DIR/runs/RUN_ID/      root, 0700: the run's home
        app/                        a tmpfs of limits.diskMb, nosuid,nodev,
                                    mode 0700, owned by the run's uid:
                                    mounted read-write at /app/functions,
                                    the working directory
            request.json            the invoke body, written before the start
            .env.config             KEY=VALUE lines: the function's env and ours
            result.json, logs.json  written by the function (optional)

The folder lives in memory (its pages are charged to the container's
memory), a write past ``diskMb`` fails inside the container with ENOSPC,
and nothing a run reads or writes reaches the box's disk. It exists for
the run only: once the run has ended, ``result.json`` and ``logs.json`` are
read (capped) into the run's record and the folder goes. A container binds
only its own ``app`` folder, so one run never sees another's.

Whatever the function leaves in ``app`` is read with care: it may have
replaced a file with a symbolic link (to make the root-run loader read a
host file) or a FIFO (to make it block), so files are opened without
following links, without blocking, and only regular files, up to a size,
are read; JSON nested too deeply for the parser is refused, not a crash.

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
from pathlib import Path
from typing import Any

from edgeloader.errors import ConfigError, NotFound
from edgeloader.storage.files import atomic_write
from edgeloader.storage.mounts import mount_tmpfs, mounted_under, unmount
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


class RunFolders:
    def __init__(self, functions_dir: Path) -> None:
        self.root = functions_dir / "runs"

    def open(self) -> None:
        """The runs' folder, emptied of what a dead process left (its
        mounts included)."""
        ensure_private_dir(self.root)
        for point in mounted_under(self.root):
            unmount(point)
        for leftover in self.root.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def home(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise NotFound(f"no run {run_id}")
        return self.root / run_id

    def work(self, run_id: str) -> Path:
        """The folder the container mounts."""
        return self.home(run_id) / "app"

    def prepare(
        self, run_id: str, request: bytes | None, env: Mapping[str, str], uid: int, size: int
    ) -> Path:
        """Mounts the run's folder (a tmpfs of ``size`` bytes given to
        ``uid``) and writes its input files (a warm container's folder,
        ``request`` None, has no ``request.json``: its socket carries it)."""
        home = self.home(run_id)
        home.mkdir(mode=0o700)
        work = home / "app"
        work.mkdir(mode=0o700)
        try:
            mount_tmpfs(work, size, uid=uid)
        except PermissionError:
            shutil.rmtree(home, ignore_errors=True)
            raise ConfigError(
                "cannot mount a run folder: function runs need the service to run as root"
            ) from None
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        lines = "".join(f"{key}={value}\n" for key, value in env.items())
        files = [(ENV_CONFIG, lines.encode())]
        if request is not None:
            files.append((REQUEST, request))
        for name, data in files:
            atomic_write(work / name, data)
            os.chown(work / name, uid, uid)
        return work

    def read_result(self, run_id: str, limit: int) -> Any:
        """The parsed ``result.json``; None if the function wrote none."""
        data = _read_untrusted(self.work(run_id) / RESULT, limit)
        if data is None:
            return None
        return parse_output(data, RESULT)

    def read_logs(self, run_id: str, limit: int) -> Any:
        """The parsed ``logs.json``; None if there is none or it cannot be used."""
        try:
            data = _read_untrusted(self.work(run_id) / LOGS, limit)
            return None if data is None else parse_output(data, LOGS)
        except BadOutput as exc:
            log.info("run %s: %s", run_id, exc)
            return None

    def remove(self, run_id: str) -> None:
        """The run's folder goes: unmounted (what was in it is gone) and removed."""
        home = self.home(run_id)
        for point in mounted_under(home):
            unmount(point)
        shutil.rmtree(home, ignore_errors=True)

    def exists(self, run_id: str) -> bool:
        return self.home(run_id).exists()

    def usage(self) -> tuple[int, int]:
        """(bytes held, bytes of size) summed over the run folders mounted
        now: cheap, for ``/metrics`` at each scrape."""
        used = size = 0
        for point in mounted_under(self.root):
            if point == self.root:
                continue
            try:
                fs = os.statvfs(point)
            except OSError:  # unmounted meanwhile
                continue
            used += (fs.f_blocks - fs.f_bfree) * fs.f_frsize
            size += fs.f_blocks * fs.f_frsize
        return used, size


def parse_output(data: bytes, name: str) -> Any:
    """A file the function wrote, as JSON; :class:`BadOutput` if it is not."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BadOutput(f"{name} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadOutput(f"{name} is nested too deeply") from None


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
