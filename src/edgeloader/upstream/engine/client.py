"""The container engine at ``DOCKER_HOST``: Docker Engine or podman.

Which one answers is asked once (``GET /version``); its backend
(``podman.py`` or ``docker.py``, behind ``backend.EngineBackend``) then
does what the two do differently: image loads, container creation, waits,
removal and builds. What they answer alike (image checks, start, kill, a
container's state and output, finding containers by label) is done here,
through the API both speak, and every error is mapped in one place
(``EngineApi.mapped``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from edgeloader.errors import EdgeloaderError, EngineError, NotFound
from edgeloader.upstream.engine.api import EngineApi
from edgeloader.upstream.engine.backend import EngineBackend
from edgeloader.upstream.engine.docker import DockerBackend
from edgeloader.upstream.engine.podman import PodmanBackend
from edgeloader.upstream.engine.spec import ContainerExit, ContainerSpec

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, docker_host: str | None) -> None:
        self.docker_host = docker_host
        self.api = EngineApi(docker_host)
        self._backend: EngineBackend | None = None
        self._detecting = asyncio.Lock()
        self._cgroup_driver: str | None = None

    async def close(self) -> None:
        await self.api.close()

    async def backend(self) -> EngineBackend:
        """The backend of the engine that answers (asked once)."""
        async with self._detecting:
            if self._backend is None:
                with self.api.mapped("engine version"):
                    version: dict[str, Any] = await self.api.docker.version()
                components = {
                    str(c.get("Name", "")).lower(): str(c.get("Version", ""))
                    for c in version.get("Components") or []
                }
                podman = next((v for name, v in components.items() if "podman" in name), None)
                if podman is not None:
                    self._backend = PodmanBackend(self.api, podman)
                else:
                    self._backend = DockerBackend(self.api, str(version.get("Version", "?")))
            return self._backend

    async def cgroup_driver(self) -> str:
        """How the engine manages cgroups (``cgroupfs``, ``systemd``), asked
        once; both engines answer it in their common ``/info``."""
        if self._cgroup_driver is None:
            with self.api.mapped("engine info"):
                info: Mapping[str, Any] = await self.api.docker.system.info()
            self._cgroup_driver = str(info.get("CgroupDriver") or "")
        return self._cgroup_driver

    async def describe(self) -> str:
        """The engine's name and version, as ``doctor`` shows them."""
        backend = await self.backend()
        return f"{backend.name} {backend.version}"

    # Images

    async def load(self, archive: AsyncIterable[bytes]) -> list[str]:
        """Streams a ``docker save`` archive into the engine's image load;
        returns the engine's messages. There is no total timeout: a big
        archive on a slow device may take minutes."""
        return await (await self.backend()).load(archive)

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        """The engine's record of an image; :class:`NotFound` if it has none."""
        with self.api.mapped(
            "image inspect",
            missing=f"image {ref} is not in the engine",
            invalid=f"image {ref!r} is not a reference the engine accepts",
        ):
            info: dict[str, Any] = await self.api.docker.images.inspect(ref)
        return info

    async def image_volumes(self, ref: str) -> tuple[str, ...]:
        """The paths the image declares as ``VOLUME``."""
        config = (await self.inspect_image(ref)).get("Config") or {}
        return tuple(sorted(config.get("Volumes") or {}))

    async def missing_images(self, refs: tuple[str, ...]) -> list[str]:
        """Those of ``refs`` the engine does not have."""
        missing = []
        for ref in refs:
            try:
                await self.inspect_image(ref)
            except NotFound:
                missing.append(ref)
        return missing

    async def image_ids(self) -> set[str]:
        with self.api.mapped("image list"):
            images: list[dict[str, Any]] = await self.api.docker.images.list(all=True)
        return {str(img.get("Id")) for img in images}

    async def remove_images(self, ids: set[str]) -> None:
        """Best-effort removal, used to clean up after a failed load."""
        for image_id in ids:
            try:
                with self.api.mapped("image remove"):
                    await self.api.docker.images.delete(image_id, force=True)
                log.info("removed partially loaded image %s", image_id)
            except EdgeloaderError:
                log.warning("could not remove image %s", image_id, exc_info=True)

    # Containers (function runs)

    async def create_container(self, spec: ContainerSpec) -> str:
        """Creates (does not start) the container; returns its ID."""
        return await (await self.backend()).create_container(spec)

    async def start_container(self, container_id: str) -> None:
        with self.api.mapped("container start"):
            await self.api.docker.containers.container(container_id).start()

    async def wait_container(self, container_id: str) -> None:
        """Returns once the container has stopped; no timeout of its own."""
        await (await self.backend()).wait_container(container_id)

    async def kill_container(self, container_id: str) -> None:
        """SIGKILL; a container that has already stopped is no error."""
        try:
            with self.api.mapped("container kill", ignore=(404, 409)):
                await self.api.docker.containers.container(container_id).kill(signal="KILL")
        except EngineError:
            # Podman answers 500, not 409, for a container that has stopped.
            if (await self._state(container_id)).get("Running"):
                raise

    async def container_exit(self, container_id: str) -> ContainerExit:
        state = await self._state(container_id)
        return ContainerExit(
            int(state.get("ExitCode") or 0),
            bool(state.get("OOMKilled")),
            bool(state.get("Running")),
        )

    async def _state(self, container_id: str) -> dict[str, Any]:
        with self.api.mapped("container inspect", missing=f"container {container_id} is gone"):
            info: dict[str, Any] = await self.api.docker.containers.container(container_id).show()
        state: dict[str, Any] = info.get("State") or {}
        return state

    async def attach(self, container_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """The container's output as it is written, ``(1, data)`` for stdout
        and ``(2, data)`` for stderr, until it ends. Attach before the start:
        the engine keeps no log of its own (docs/functions.md)."""
        with self.api.mapped("container attach", missing=f"container {container_id} is gone"):
            stream = self.api.docker.containers.container(container_id).attach(
                stdout=True, stderr=True
            )
            await stream.__aenter__()
        return self._output(stream)

    async def _output(self, stream: Any) -> AsyncIterator[tuple[int, bytes]]:
        try:
            while True:
                with self.api.mapped("container attach"):
                    message = await stream.read_out()
                if message is None:
                    return
                yield message.stream, message.data
        finally:
            await stream.close()

    async def remove_container(self, container_id: str) -> None:
        """Removes the container, killing it first if it runs; gone is no error."""
        await (await self.backend()).remove_container(container_id)

    async def read_file(self, container_id: str, path: str, limit: int) -> bytes | None:
        """A regular file of a container (created or stopped; its mounts
        as the engine sees them), up to ``limit`` bytes; None if absent."""
        archive: bytearray | None = None
        with self.api.mapped("container archive", ignore=(404,)):
            async with self.api.query(
                f"containers/{container_id}/archive", params={"path": path}
            ) as resp:
                archive = bytearray()
                # The tar's headers and padding, then the file, up to limit.
                while len(archive) <= limit + 4096 and (piece := await resp.content.read(1 << 16)):
                    archive += piece
        return None if archive is None else _only_file(bytes(archive), limit)

    async def import_image(self, rootfs: bytes, ref: str) -> None:
        await (await self.backend()).import_image(rootfs, ref)

    async def labelled_containers(self, label: str) -> dict[str, str]:
        """Every container carrying ``label``, running or not: ID → label value."""
        with self.api.mapped("container list"):
            items: list[dict[str, Any]] = await self.api.docker._query_json(
                "containers/json",
                params={"all": "true", "filters": json.dumps({"label": [label]})},
            )
        return {str(c["Id"]): str((c.get("Labels") or {}).get(label, "")) for c in items}

    async def build_image(
        self, context: AsyncIterable[bytes], tag: str, labels: Mapping[str, str]
    ) -> None:
        """Builds ``tag`` from a tar ``context`` with no network and local base
        images only (callers check that they are local); a failed build is
        :class:`BuildFailed` with the engine's last lines."""
        await (await self.backend()).build_image(context, tag, labels)


def _only_file(archive: bytes, limit: int) -> bytes | None:
    """The one regular file of a tar archive the engine sent, if any."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar:
                if member.isfile() and member.size <= limit:
                    handle = tar.extractfile(member)
                    return handle.read() if handle is not None else None
    except tarfile.TarError:
        return None
    return None
