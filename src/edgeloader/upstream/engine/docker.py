"""Docker Engine, through its API (the one podman's compatible service
imitates):

- **load**: ``POST /images/load``; a refusal arrives inside a 200 stream
  as ``errorDetail`` (``Error processing tar file(…)``), which becomes the
  same ``image load failed: …`` as podman's HTTP error;
- **create**: the isolation spec in Docker's words. Its tmpfs mounts are
  ``noexec`` by default (``/tmp`` is noexec on every engine, so the same
  here), its binds take no ``nosuid``/``nodev`` (the run folder is a tmpfs
  the loader mounted ``nosuid,nodev``, and a bind keeps its source's
  flags), and each of the image's ``VOLUME`` paths is covered by a capped
  tmpfs, so that no anonymous volume is made on the host's disk;
- **remove**: forced, with ``v=1`` (volumes too, should one ever exist).
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterable, Mapping
from typing import Any

from edgeloader.errors import BuildFailed, EngineError
from edgeloader.upstream.engine.api import (
    NO_TIMEOUT,
    EngineApi,
    json_lines,
    stream_error,
    without_paths,
)
from edgeloader.upstream.engine.spec import CONTAINER_TMP, ContainerSpec

__all__ = ["DockerBackend"]

_BUILD_LINES = 15  # lines of build output kept for an error


class DockerBackend:
    name = "Docker Engine"
    reports_oom = True

    def __init__(self, api: EngineApi, version: str) -> None:
        self.api = api
        self.version = version

    async def load(self, archive: AsyncIterable[bytes]) -> list[str]:
        messages: list[str] = []
        with self.api.mapped("image load", hide_paths=True):
            async with self.api.query(
                "images/load",
                "POST",
                data=archive,
                headers={"Content-Type": "application/x-tar"},
                timeout=NO_TIMEOUT,
                chunked=True,
            ) as resp:
                async for item in json_lines(resp.content):
                    if (error := stream_error(item)) is not None:
                        raise EngineError(f"image load failed: {without_paths(error)}")
                    text = str(item.get("stream") or item.get("status") or "").strip()
                    if text:
                        messages.append(text)
        if not any(m.startswith("Loaded image") for m in messages):
            raise EngineError(f"image load failed: the engine loaded nothing: {messages[-3:]!r}")
        return messages

    async def create_container(self, spec: ContainerSpec) -> str:
        with self.api.mapped(
            "container create", missing=f"image {spec.image} is not in the engine"
        ):
            container = await self.api.docker.containers.create(create_body(spec), name=spec.name)
        return str(container.id)

    async def wait_container(self, container_id: str) -> None:
        with self.api.mapped("container wait", missing=f"container {container_id} is gone"):
            await self.api.docker.containers.container(container_id).wait(timeout=NO_TIMEOUT)

    async def remove_container(self, container_id: str) -> None:
        with self.api.mapped("container remove", ignore=(404,)):
            await self.api.docker.containers.container(container_id).delete(force=True, v=True)

    async def import_image(self, rootfs: bytes, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        with self.api.mapped("image import"):
            async with self.api.query(
                "images/create",
                "POST",
                params={"fromSrc": "-", "repo": repository, "tag": tag},
                data=rootfs,
                headers={"Content-Type": "application/x-tar"},
            ) as resp:
                async for item in json_lines(resp.content):
                    if (error := stream_error(item)) is not None:
                        raise EngineError(f"image import failed: {error}")

    async def build_image(
        self, context: AsyncIterable[bytes], tag: str, labels: Mapping[str, str]
    ) -> None:
        # The legacy builder has no pull policy: callers check that every base
        # image is local, and RUN --mount needs BuildKit, which is not used.
        params = {
            "t": tag,
            "networkmode": "none",
            "rm": "true",
            "forcerm": "true",
            "labels": json.dumps(dict(labels)),
        }
        lines: collections.deque[str] = collections.deque(maxlen=_BUILD_LINES)
        with self.api.mapped("image build", refused=BuildFailed):
            async with self.api.query(
                "build",
                "POST",
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


def create_body(spec: ContainerSpec) -> dict[str, Any]:
    """Docker's create of the isolation spec (``spec.py``)."""
    mounts: list[dict[str, Any]] = [
        {"Type": "bind", "Source": str(spec.folder), "Target": spec.workdir},
    ]
    mounts += [
        {"Type": "bind", "Source": str(b.source), "Target": b.target, "ReadOnly": True}
        for b in spec.models
    ]
    # A tmpfs in Mounts is always nosuid,nodev,noexec on Docker.
    mounts += [
        {"Type": "tmpfs", "Target": path, "TmpfsOptions": {"SizeBytes": spec.tmpfs_bytes}}
        for path in spec.volume_paths()
    ]
    host: dict[str, Any] = {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "Tmpfs": {CONTAINER_TMP: f"rw,noexec,nosuid,nodev,size={spec.tmpfs_bytes},mode=1777"},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "Devices": [],
        # No log on the engine's disk: the loader attaches and caps the output.
        "LogConfig": {"Type": "none", "Config": {}},
        "ShmSize": spec.tmpfs_bytes,
        "PidsLimit": spec.pids,
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes,
        "NanoCpus": round(spec.cpus * 1e9),
        "Mounts": mounts,
    }
    if spec.cgroup_parent is not None:
        host["CgroupParent"] = spec.cgroup_parent
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "User": f"{spec.uid}:{spec.uid}",
        "WorkingDir": spec.workdir,
        "NetworkDisabled": True,
        "HostConfig": host,
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    return config
