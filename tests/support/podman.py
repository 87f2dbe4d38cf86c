"""A private podman Docker-compatible API service for tests and `make run`.

``PodmanService`` runs ``podman system service`` with its own configuration,
storage, runtime state and socket under one folder, so tests never touch the
machine's default container storage. The image helpers that build busybox
images and save them live in :mod:`tests.support.engines` and work with
:class:`tests.support.docker.DockerService` too; the ones existing tests
import from here are re-exported.

Install the engine with ``scripts/install-engine.sh`` (``make engine``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from contextlib import suppress
from pathlib import Path

from tests.support.engines import (
    BUSYBOX,
    EngineError,
    EngineKind,
    EngineService,
    busybox_static,
    delete_runc_containers,
    image_exists,
    import_busybox_image,
    remove_image,
    remove_tree,
    save_images,
    tail,
)

__all__ = [
    "BUSYBOX",
    "PodmanService",
    "available",
    "image_exists",
    "import_busybox_image",
    "remove_image",
    "save_images",
]

# podman refuses to clean up under a longer run root.
_MAX_RUN_ROOT = 50


def available() -> bool:
    """True when podman, runc and a static busybox are installed."""
    return bool(shutil.which("podman") and shutil.which("runc")) and busybox_static()


class PodmanService(EngineService):
    """``podman system service`` with private config, storage and socket.

    Everything lives under ``base_dir``, which is created if needed and
    deleted by :meth:`stop` (together with every container the service ran).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        start_timeout: float = 30.0,
        podman: str = "podman",
    ) -> None:
        super().__init__(base_dir, start_timeout=start_timeout)
        self._podman = podman
        self.containers_conf = self.base_dir / "containers.conf"
        self.storage_conf = self.base_dir / "storage.conf"
        self._socket_dir = self._short_dir("podman.sock")

    @property
    def kind(self) -> EngineKind:
        return "podman"

    def stop(self) -> None:
        """Remove all containers, stop the service and delete ``base_dir``.

        Safe to call more than once and after a failed :meth:`start`.
        """
        configured = self.containers_conf.exists() and self.storage_conf.exists()
        if configured and shutil.which(self._podman) is not None:
            # conmon outlives the service; removing the containers stops it.
            with suppress(subprocess.TimeoutExpired):
                self.run_podman("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        self._stop_process()
        # Fallback for when podman could not clean up (e.g. the service or
        # the CLI crashed): containers run as PID 1 of their own PID namespace
        # and ignore SIGTERM, and runc keeps state in /run/runc.
        delete_runc_containers(None, _container_ids(self.base_dir / "graph" / "vfs-containers"))
        for path in self._owned_dirs():
            remove_tree(path)

    # -- addressing --------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self._socket_dir / "podman.sock"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point podman's CLI and Docker clients at this service.

        Merge them into ``os.environ`` for subprocesses.
        """
        return {
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "DOCKER_HOST": self.docker_host,
        }

    # -- talking to the service --------------------------------------------

    def run_podman(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the podman CLI against this service's storage."""
        result = subprocess.run(
            [self._podman, *args],
            env=self._service_env(),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise EngineError(
                f"podman {' '.join(args)} exited with {result.returncode}: {tail(result.stderr)}"
            )
        return result

    # -- internals ---------------------------------------------------------

    def _prepare(self) -> list[str]:
        podman = shutil.which(self._podman)
        if podman is None:
            raise EngineError(f"{self._podman!r} not found on PATH; run scripts/install-engine.sh")
        self._write_config()
        return [podman, "system", "service", "--time=0", self.docker_host]

    def _owned_dirs(self) -> list[Path]:
        dirs = [self.base_dir]
        if self._socket_dir != self.base_dir:
            dirs.append(self._socket_dir)
        return dirs

    def _write_config(self) -> None:
        base = self.base_dir
        if len(str(base / "run")) > _MAX_RUN_ROOT:
            # Past this podman's clean-up refuses the run root, and every
            # container wait falls back to a 20 s timeout.
            warnings.warn(
                f"podman run root {base / 'run'} is longer than {_MAX_RUN_ROOT} characters; "
                "container waits will be slow",
                stacklevel=3,
            )
        for name in ("tmp", "image-tmp", "networks", "volumes"):
            (base / name).mkdir(parents=True, exist_ok=True)
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        # The machine cannot raise rlimits; crun and systemd cgroups fail on
        # hybrid cgroups; journald is not available for events.
        self.containers_conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f"tmp_dir = {_toml_str(base / 'tmp')}\n"
            f"image_copy_tmp_dir = {_toml_str(base / 'image-tmp')}\n"
            f"volume_path = {_toml_str(base / 'volumes')}\n"
            "\n"
            "[network]\n"
            f"network_config_dir = {_toml_str(base / 'networks')}\n"
        )
        # vfs needs no kernel overlay support and leaves no layer mounts.
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f"runroot = {_toml_str(base / 'run')}\n"
            f"graphroot = {_toml_str(base / 'graph')}\n"
        )


def _container_ids(containers_dir: Path) -> list[str]:
    if not containers_dir.is_dir():
        return []
    return [e.name for e in containers_dir.iterdir() if e.is_dir() and len(e.name) == 64]


def _toml_str(path: Path) -> str:
    return json.dumps(str(path))
