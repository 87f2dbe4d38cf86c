"""What a run used: its CPU time and its peak memory, from a cgroup the
loader names for the run.

The engines report nothing once a container has exited, and they delete
the container's own cgroup when they reap it. So each run's container is
created under a parent cgroup of its own, ``/edgeloader-runs/RUN_ID``
(the engine creates it, in every hierarchy): it outlives the container,
and its counters hold the run's totals, since a cgroup's CPU time and its
peak memory include its children's. Once the container is removed the
loader reads them and removes the parent.

- cgroup v1: ``cpuacct.usage`` (ns) and ``memory.max_usage_in_bytes``;
- cgroup v2: ``cpu.stat`` ``usage_usec`` and ``memory.peak`` (Linux 5.19
  and later; without it the peak is unknown).

This needs an engine that manages cgroups itself (its ``cgroupfs``
driver, the default of Docker Engine and of podman as root on cgroup v1).
Under the ``systemd`` driver a parent must be a slice unit, and the
figures are left out (``null``) rather than guessed.

The methods are blocking; async code calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CGROUP_ROOT", "RunCgroups", "Usage"]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "edgeloader-runs"


@dataclass(frozen=True)
class Usage:
    cpu_ns: int | None
    memory_peak: int | None  # bytes

    @property
    def cpu_ms(self) -> int | None:
        return None if self.cpu_ns is None else round(self.cpu_ns / 1e6)

    @property
    def memory_peak_mb(self) -> float | None:
        return None if self.memory_peak is None else round(self.memory_peak / (1 << 20), 1)


class RunCgroups:
    """The runs' parent cgroups on this host, for an engine whose cgroup
    driver is ``driver``."""

    def __init__(self, driver: str, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()
        self.usable = driver == "cgroupfs" and root.is_dir()
        if not self.usable:
            log.info(
                "the engine's cgroup driver is %s: run records carry no CPU or memory figures",
                driver or "unknown",
            )

    def parent(self, run_id: str) -> str | None:
        """The ``CgroupParent`` to give the run's container, if usable."""
        return f"/{PARENT}/{run_id}" if self.usable else None

    def usage(self, run_id: str) -> Usage:
        """The run's totals; read after its container is gone."""
        if not self.usable:
            return Usage(None, None)
        if self.v2:
            folder = self.root / PARENT / run_id
            cpu = _field(folder / "cpu.stat", "usage_usec")
            return Usage(None if cpu is None else cpu * 1000, _number(folder / "memory.peak"))
        cpu_folder = self._hierarchy("cpuacct")
        memory_folder = self._hierarchy("memory")
        return Usage(
            None if cpu_folder is None else _number(cpu_folder / PARENT / run_id / "cpuacct.usage"),
            None
            if memory_folder is None
            else _number(memory_folder / PARENT / run_id / "memory.max_usage_in_bytes"),
        )

    def reset_peak(self, run_id: str) -> bool:
        """Starts the peak memory again from the current use, so that a warm
        container's next invoke has a peak of its own; False where the
        kernel cannot (cgroup v2 before Linux 6.12)."""
        if not self.usable:
            return False
        if self.v2:
            path = self.root / PARENT / run_id / "memory.peak"
        else:
            memory = self._hierarchy("memory")
            if memory is None:
                return False
            path = memory / PARENT / run_id / "memory.max_usage_in_bytes"
        try:
            path.write_text("0")
        except OSError:
            return False
        return True

    def remove(self, run_id: str) -> None:
        """Removes the run's parent in every hierarchy (once it is empty)."""
        if not self.usable:
            return
        for folder in self._folders(run_id):
            with contextlib.suppress(FileNotFoundError):
                try:
                    folder.rmdir()
                except OSError as exc:  # EBUSY: a process is still in it
                    log.warning("could not remove the cgroup %s: %s", folder, exc)

    def leftovers(self) -> list[str]:
        """Runs whose parent cgroups a dead process left."""
        if not self.usable:
            return []
        found: set[str] = set()
        for hierarchy in self._hierarchies():
            with contextlib.suppress(OSError):
                found.update(e.name for e in (hierarchy / PARENT).iterdir() if e.is_dir())
        return sorted(found)

    def _folders(self, run_id: str) -> list[Path]:
        return [h / PARENT / run_id for h in self._hierarchies()]

    def _hierarchies(self) -> list[Path]:
        if self.v2:
            return [self.root]
        with contextlib.suppress(OSError):
            return [
                self.root / name
                for name in sorted(os.listdir(self.root))
                if (self.root / name).is_dir() and not (self.root / name).is_symlink()
            ]
        return []

    def _hierarchy(self, controller: str) -> Path | None:
        """The v1 hierarchy that holds ``controller`` (``cpu,cpuacct`` too)."""
        for hierarchy in self._hierarchies():
            if controller in hierarchy.name.split(","):
                return hierarchy
        return None


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _field(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None
