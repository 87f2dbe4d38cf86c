"""The seam between the loader and one kind of container engine.

What the engines answer alike (image checks, starting, killing, reading a
container's state and output) goes through their common API
(``client.Engine``); what differs goes through a backend: how an archive
is loaded and its refusals reported, how the isolation spec becomes a
create body, how a container is waited on, removed and built. Podman and
Docker Engine each have one (``podman.py``, ``docker.py``); another
engine (containerd with nerdctl's API, a k3s node) would be another class
that fits this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Protocol

from edgeloader.upstream.engine.spec import ContainerSpec

__all__ = ["EngineBackend"]


class EngineBackend(Protocol):
    #: What ``doctor`` and the logs call the engine, with its version.
    name: str
    version: str
    #: Whether the engine's ``OOMKilled`` can be trusted (podman 4 never sets it).
    reports_oom: bool

    async def load(self, archive: AsyncIterable[bytes]) -> list[str]:
        """Streams a ``docker save`` archive into the engine; its messages.
        A refusal, however the engine says it, is ``image load failed: …``."""
        ...

    async def create_container(self, spec: ContainerSpec) -> str:
        """Creates (does not start) the container; returns its ID."""
        ...

    async def wait_container(self, container_id: str) -> None:
        """Returns once the container has stopped; no timeout of its own."""
        ...

    async def remove_container(self, container_id: str) -> None:
        """Removes the container at once, killing it first if it runs, with
        any volume it has; gone is no error."""
        ...

    async def import_image(self, rootfs: bytes, ref: str) -> None:
        """Makes image ``ref`` from a root file system (a tar)."""
        ...

    async def build_image(
        self, context: AsyncIterable[bytes], tag: str, labels: Mapping[str, str]
    ) -> None:
        """Builds ``tag`` from a tar ``context`` with no network and local
        base images only; ``BuildFailed`` with the engine's last lines."""
        ...
