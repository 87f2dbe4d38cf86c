"""The container engine: ``Engine`` (``client.py``) over one backend per
engine (``backend.py``: podman, Docker Engine)."""

from edgeloader.upstream.engine.backend import EngineBackend
from edgeloader.upstream.engine.client import Engine
from edgeloader.upstream.engine.spec import Bind, ContainerExit, ContainerSpec

__all__ = ["Bind", "ContainerExit", "ContainerSpec", "Engine", "EngineBackend"]
