"""What every function container is, on any engine: the isolation spec.

The isolation is not a field, so no caller can weaken it. Every container
has no network, a read-only root, ``/tmp`` a capped tmpfs (``noexec``, as
on every engine), no capabilities, ``no-new-privileges``, user and group
``uid`` (never 0), no devices, the pids, memory (swap equal to it) and CPU
limits, no engine log (its output is read through an attach made before
the start, capped by the loader, so that nothing a run prints reaches the
host's disk) and no mount but:

- ``folder`` read-write at ``workdir`` (the run folder, a tmpfs the
  loader mounted: docs/functions.md);
- ``models``, read-only binds (docs/functions.md, "Models");
- a capped tmpfs over each path the image declares as a ``VOLUME``, so
  that no engine makes an anonymous volume on the host's disk.

Each backend (``podman.py``, ``docker.py``) turns it into its engine's
create body; the labels name the run and the function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTAINER_TMP", "CPU_PERIOD", "Bind", "ContainerExit", "ContainerSpec", "covered"]

CONTAINER_TMP = "/tmp"  # noqa: S108 - the container's own /tmp, a capped tmpfs
CPU_PERIOD = 100_000  # microseconds; the CPU quota is a share of it


@dataclass(frozen=True)
class Bind:
    """A host folder or file bound read-only into the container."""

    source: Path
    target: str


@dataclass(frozen=True)
class ContainerSpec:
    """A function run's container (see the module's docstring)."""

    name: str
    image: str
    command: tuple[str, ...] | None
    env: Mapping[str, str]
    uid: int
    folder: Path
    workdir: str
    memory_bytes: int
    cpus: float
    pids: int
    tmpfs_bytes: int
    labels: Mapping[str, str]
    #: The image's declared VOLUME paths, each covered by a tmpfs of ``tmpfs_bytes``.
    volumes: tuple[str, ...] = ()
    models: tuple[Bind, ...] = ()
    #: The cgroup the container's own goes under, so that what the run used
    #: can be read after it ended (``functions/usage.py``); None: the engine's.
    cgroup_parent: str | None = None

    def __post_init__(self) -> None:
        if self.uid <= 0:
            raise ValueError("a function never runs as root")

    def volume_paths(self) -> list[str]:
        """The image's volumes that need a tmpfs of their own: those under
        a mount of ours already are covered by it."""
        ours = [CONTAINER_TMP, self.workdir, *(bind.target for bind in self.models)]
        return [path for path in self.volumes if not covered(path, ours)]


def covered(path: str, mounts: list[str]) -> bool:
    """Whether ``path`` is one of ``mounts`` or lies under one."""
    path = path.rstrip("/") or "/"
    return any(path == m.rstrip("/") or path.startswith(m.rstrip("/") + "/") for m in mounts)


@dataclass(frozen=True)
class ContainerExit:
    code: int
    oom_killed: bool  # as the engine reports it (podman 4 never does)
    running: bool = False
