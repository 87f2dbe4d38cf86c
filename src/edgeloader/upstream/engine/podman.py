"""Podman, through its native (libpod) API where it says what the
compatible one cannot:

- **load**: ``POST /libpod/images/load``, whose answer names the images
  loaded; a refusal is an HTTP error;
- **create**: no tmpfs of its own on ``/var/tmp`` and ``/run`` under the
  read-only root, no ``/etc/passwd`` or ``/etc/hosts`` mounts, the image's
  volumes left to us (each covered by a capped tmpfs);
- **wait**: the compatible wait polls the container without pause (a core
  per waiting run); the native one polls at an interval;
- **remove**: at once (the compatible forced removal sends SIGTERM and
  waits 10 s; a function's PID 1 may ignore SIGTERM), with its volumes;
- **build**: ``pullpolicy=never`` (the compatible build can only say "pull
  if missing").
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterable, Mapping
from typing import Any

from edgeloader.errors import BuildFailed, EngineError
from edgeloader.upstream.engine.api import NO_TIMEOUT, EngineApi, json_lines, stream_error
from edgeloader.upstream.engine.spec import CONTAINER_TMP, CPU_PERIOD, ContainerSpec

__all__ = ["PodmanBackend"]

# Podman's native API; podman 4 and 5 both answer under this version.
LIBPOD = "v4.0.0/libpod"
# Each poll of the native wait takes the container's lock, and polling every
# few milliseconds slows the container's own exit handling (measured: a
# trivial run took longer at 5 ms than at 25 or 50 ms), so: every 25 ms at
# first, then seldom.
_WAIT_STEPS: tuple[tuple[str, float | None], ...] = (
    ("25ms", 2.0),
    ("100ms", 30.0),
    ("250ms", None),
)
_BUILD_LINES = 15  # lines of build output kept for an error


class PodmanBackend:
    name = "podman"
    reports_oom = False  # podman 4 never sets OOMKilled

    def __init__(self, api: EngineApi, version: str) -> None:
        self.api = api
        self.version = version

    async def load(self, archive: AsyncIterable[bytes]) -> list[str]:
        with self.api.mapped("image load", hide_paths=True):
            async with self.api.query(
                f"{LIBPOD}/images/load",
                "POST",
                versioned=False,
                data=archive,
                headers={"Content-Type": "application/x-tar"},
                timeout=NO_TIMEOUT,
                chunked=True,
            ) as resp:
                answer = await resp.read()
        return [f"Loaded image: {name}" for name in _loaded_names(answer)]

    async def create_container(self, spec: ContainerSpec) -> str:
        with self.api.mapped(
            "container create", missing=f"image {spec.image} is not in the engine"
        ):
            body = json.dumps(create_body(spec))
            async with self.api.query(
                f"{LIBPOD}/containers/create", "POST", versioned=False, data=body
            ) as resp:
                created: dict[str, Any] = await resp.json()
        return str(created["Id"])

    async def wait_container(self, container_id: str) -> None:
        with self.api.mapped("container wait", missing=f"container {container_id} is gone"):
            for interval, within in _WAIT_STEPS:
                try:
                    async with asyncio.timeout(within):
                        async with self.api.query(
                            f"{LIBPOD}/containers/{container_id}/wait",
                            "POST",
                            versioned=False,
                            params={"interval": interval},
                            timeout=NO_TIMEOUT,
                        ) as resp:
                            await resp.read()
                            return
                except TimeoutError:
                    continue  # still running: wait again, polling less often

    async def remove_container(self, container_id: str) -> None:
        with self.api.mapped("container remove", ignore=(404,)):
            async with self.api.query(
                f"{LIBPOD}/containers/{container_id}",
                "DELETE",
                versioned=False,
                params={"force": "true", "timeout": "0", "volumes": "true"},
            ):
                return

    async def import_image(self, rootfs: bytes, ref: str) -> None:
        with self.api.mapped("image import"):
            async with self.api.query(
                f"{LIBPOD}/images/import",
                "POST",
                versioned=False,
                params={"reference": ref},
                data=rootfs,
                headers={"Content-Type": "application/x-tar"},
            ) as resp:
                await resp.read()

    async def build_image(
        self, context: AsyncIterable[bytes], tag: str, labels: Mapping[str, str]
    ) -> None:
        params = {
            "t": tag,
            "networkmode": "none",
            "rm": "true",
            "forcerm": "true",
            "pullpolicy": "never",
            "labels": json.dumps(dict(labels)),
        }
        lines: collections.deque[str] = collections.deque(maxlen=_BUILD_LINES)
        with self.api.mapped("image build", refused=BuildFailed):
            async with self.api.query(
                f"{LIBPOD}/build",
                "POST",
                versioned=False,
                params=params,
                data=context,
                headers={"Content-Type": "application/x-tar"},
                timeout=NO_TIMEOUT,
            ) as resp:
                async for item in json_lines(resp.content):
                    if (error := stream_error(item)) is not None:
                        lines.append(error)
                        raise BuildFailed("image build failed:\n" + "\n".join(lines))
                    text = item.get("stream")
                    if isinstance(text, str):
                        lines.extend(line for line in text.splitlines() if line.strip())


def _tmpfs(target: str, size: int, *more: str) -> dict[str, Any]:
    options = [f"size={size}", "nosuid", "nodev", "noexec", *more]
    return {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}


def create_body(spec: ContainerSpec) -> dict[str, Any]:
    """Podman's native create of the isolation spec (``spec.py``)."""
    mounts = [
        _tmpfs(CONTAINER_TMP, spec.tmpfs_bytes, "mode=1777"),
        {
            "destination": spec.workdir,
            "type": "bind",
            "source": str(spec.folder),
            "options": ["rbind", "rw", "nosuid", "nodev"],
        },
    ]
    mounts += [
        {
            "destination": bind.target,
            "type": "bind",
            "source": str(bind.source),
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
        for bind in spec.models
    ]
    mounts += [_tmpfs(path, spec.tmpfs_bytes, "mode=1777") for path in spec.volume_paths()]
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "env": dict(spec.env),
        "labels": dict(spec.labels),
        "user": f"{spec.uid}:{spec.uid}",
        "work_dir": spec.workdir,
        "netns": {"nsmode": "none"},
        "read_only_filesystem": True,
        "read_write_tmpfs": False,
        "use_image_hosts": True,
        "manage_password": False,
        # The image's volumes are ours to cover: never an anonymous volume.
        "image_volume_mode": "ignore",
        "mounts": mounts,
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        "privileged": False,
        "devices": [],
        # No log on the engine's disk: the loader attaches and caps the output.
        "log_configuration": {"driver": "none"},
        "shm_size": spec.tmpfs_bytes,
        "resource_limits": {
            "pids": {"limit": spec.pids},
            "memory": {"limit": spec.memory_bytes, "swap": spec.memory_bytes},
            "cpu": {"quota": round(spec.cpus * CPU_PERIOD), "period": CPU_PERIOD},
        },
    }
    if spec.cgroup_parent is not None:
        # Without conmon in it, the parent holds only the container.
        body |= {"cgroup_parent": spec.cgroup_parent, "cgroups_mode": "no-conmon"}
    if spec.command:
        body["command"] = list(spec.command)
    return body


def _loaded_names(answer: bytes) -> list[str]:
    """The image names of libpod's load answer, ``{"Names": [...]}``.

    A refusal never gets here (podman answers it with an HTTP error); an
    answer that names nothing would leave the caller guessing, so it is one.
    """
    try:
        report = json.loads(answer)
    except ValueError:
        report = None
    names = report.get("Names") if isinstance(report, dict) else None
    if not isinstance(names, list) or not names:
        text = answer[:200].decode("utf-8", errors="replace")
        raise EngineError(f"image load failed: the engine's answer names no image: {text!r}")
    return [str(name) for name in names]
