"""A private Docker Engine (``dockerd``) for tests and `make run`.

``DockerService`` is the counterpart of
:class:`tests.support.podman.PodmanService`: one ``dockerd`` with its own
data root, exec root, socket, configuration file and containerd, all under
one folder, so tests never touch the machine's Docker (if it has one) and
two services can run at once. The recipe (docs/deployment.md, "Docker Engine")::

    dockerd --storage-driver=vfs --iptables=false --ip6tables=false \\
        --bridge=none --host unix://DIR/docker.sock --data-root DIR/root \\
        --exec-root DIR/exec --pidfile DIR/docker.pid

with these additions, each to keep the service to its folder:

- ``--containerd``: a containerd started here with its own configuration.
  Left to itself, dockerd 20.10 uses the machine's containerd whenever
  ``/run/containerd/containerd.sock`` exists, and otherwise starts one
  whose ``opt`` plugin writes to ``/opt/containerd``;
- ``--config-file``: ours, so that ``/etc/docker/daemon.json`` is not read,
  and it moves the daemon's key from ``/etc/docker/key.json`` into the
  folder;
- ``--ip-forward=false``: the daemon leaves the host's IP forwarding alone;
- no ``DOCKER_*`` variable of the caller's environment reaches the daemon.

What still lands outside the folder: each running container's shim socket
in ``/run/containerd/s/`` (removed when the container is; :meth:`stop`
removes those of shims it has to kill) and the containers' cgroups under
``/docker`` (removed with the containers; :meth:`stop` runs ``runc delete``
for any container left behind).

The image helpers are in :mod:`tests.support.engines`. Install the engine
with ``scripts/install-engine.sh`` (``make engine``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import suppress
from http.client import HTTPException
from pathlib import Path

from tests.support.engines import (
    COMPAT_API,
    EngineError,
    EngineKind,
    EngineService,
    busybox_static,
    delete_runc_containers,
    kill_processes_under,
    tail,
    terminate,
    unmount_under,
)

__all__ = ["DockerService", "available"]

# The paths of containerd's sockets in the run folder; the longest must fit
# a unix socket's path.
_CONTAINERD_DIR = "containerd"
_LONGEST_SOCKET = f"{_CONTAINERD_DIR}/containerd.sock.ttrpc"
# Where containerd's shims put their sockets (containerd 1.6).
_SHIM_SOCKETS = Path("/run/containerd/s")
_REQUIRED = ("dockerd", "containerd", "containerd-shim-runc-v2", "runc")


def available() -> bool:
    """True when dockerd, containerd (with its runc shim), runc and a static
    busybox are installed."""
    return all(shutil.which(name) for name in _REQUIRED) and busybox_static()


class DockerService(EngineService):
    """``dockerd`` and its own ``containerd``, with everything under ``base_dir``.

    ``base_dir`` is created if needed and deleted by :meth:`stop`, together
    with every container the service ran. The sockets, the exec root and
    containerd's state live in ``base_dir`` too, or, when its path is too
    long for a unix socket, in a folder of the system's temporary folder
    named after it. ``tmp_dir`` becomes the daemon's ``DOCKER_TMPDIR``,
    where it spools uploaded archives (by default ``<data root>/tmp``).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        start_timeout: float = 60.0,
        dockerd: str = "dockerd",
        containerd: str = "containerd",
        docker: str = "docker",
        storage_driver: str = "vfs",
        tmp_dir: Path | None = None,
    ) -> None:
        super().__init__(base_dir, start_timeout=start_timeout)
        self._dockerd = dockerd
        self._containerd_bin = containerd
        self._docker = docker
        self.storage_driver = storage_driver
        self.tmp_dir = tmp_dir
        self._run_dir = self._short_dir(_LONGEST_SOCKET)
        self.data_root = self.base_dir / "root"
        self.exec_root = self._run_dir / "exec"
        self.config_file = self.base_dir / "daemon.json"
        self.containerd_config = self.base_dir / "containerd.toml"
        self.containerd_log = self.base_dir / "containerd.log"
        self.containerd_socket = self._run_dir / _CONTAINERD_DIR / "containerd.sock"
        self._containerd: subprocess.Popen[bytes] | None = None

    @property
    def kind(self) -> EngineKind:
        return "docker"

    @property
    def socket_path(self) -> Path:
        return self._run_dir / "docker.sock"

    @property
    def running(self) -> bool:
        return super().running and self._containerd is not None and self._containerd.poll() is None

    def stop(self) -> None:
        """Remove all containers, stop dockerd and its containerd, and delete
        ``base_dir``.

        Safe to call more than once and after a failed :meth:`start`.
        """
        if self.running:
            self._remove_containers()
        # dockerd stops what still runs within its own shutdown timeout (15 s).
        self._stop_process(grace=30.0)
        if self._containerd is not None:
            terminate(self._containerd)
            self._containerd = None
        # Fallback for when the daemon could not clean up (it or containerd
        # crashed): a container's PID 1 ignores SIGTERM, and only runc knows
        # its cgroups. The shims are containerd's children in name only.
        runc_root = self.exec_root / "runtime-runc"
        if runc_root.is_dir():
            for namespace in runc_root.iterdir():
                if namespace.is_dir():
                    delete_runc_containers(namespace, [c.name for c in namespace.iterdir()])
        for path in self._owned_dirs():
            _remove_shim_sockets(kill_processes_under(path))
            unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)

    # -- talking to the service --------------------------------------------

    def run_docker(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this service (with a private CLI
        configuration folder)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env |= self.env | {"DOCKER_CONFIG": str(self.base_dir / "cli")}
        result = subprocess.run(
            [self._docker, *args],
            env=env,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args)} exited with {result.returncode}: {tail(result.stderr)}"
            )
        return result

    def containerd_log_tail(self) -> str:
        try:
            return tail(self.containerd_log.read_bytes())
        except OSError:
            return ""

    # -- internals ---------------------------------------------------------

    def _service_env(self) -> dict[str, str]:
        # dockerd reads DOCKER_TMPDIR (and a few more): only ours count.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        if self.tmp_dir is not None:
            env["DOCKER_TMPDIR"] = str(self.tmp_dir)
        return env

    def _owned_dirs(self) -> list[Path]:
        dirs = [self.base_dir]
        if self._run_dir != self.base_dir:
            dirs.append(self._run_dir)
        return dirs

    def _prepare(self) -> list[str]:
        binaries = {}
        for name in (self._dockerd, self._containerd_bin):
            path = shutil.which(name)
            if path is None:
                raise EngineError(f"{name!r} not found on PATH; run scripts/install-engine.sh")
            binaries[name] = path
        self._write_config()
        self._start_containerd(binaries[self._containerd_bin])
        return [
            binaries[self._dockerd],
            f"--config-file={self.config_file}",
            f"--containerd={self.containerd_socket}",
            f"--storage-driver={self.storage_driver}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--bridge=none",
            f"--host={self.docker_host}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.base_dir / 'docker.pid'}",
        ]

    def _write_config(self) -> None:
        for path in (self.base_dir, self._run_dir, self.containerd_socket.parent):
            path.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            json.dumps({"deprecated-key-path": str(self.base_dir / "key.json")}, indent=2) + "\n"
        )
        # Version 2 of containerd's configuration. The CRI plugin is for
        # Kubernetes; "opt" would install into /opt/containerd.
        containerd_root = self.base_dir / "containerd-root"
        self.containerd_config.write_text(
            "version = 2\n"
            f"root = {_toml_str(containerd_root)}\n"
            f"state = {_toml_str(self.containerd_socket.parent)}\n"
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "\n"
            "[grpc]\n"
            f"  address = {_toml_str(self.containerd_socket)}\n"
            "\n"
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {_toml_str(containerd_root / 'opt')}\n"
        )

    def _start_containerd(self, binary: str) -> None:
        with self.containerd_log.open("wb") as log:
            self._containerd = subprocess.Popen(
                [binary, "--config", str(self.containerd_config)],
                env=self._service_env(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not _accepts(self.containerd_socket):
            if self._containerd.poll() is not None:
                raise EngineError(
                    f"containerd exited with {self._containerd.returncode}:\n"
                    f"{self.containerd_log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"containerd did not listen within {self.start_timeout:g}s:\n"
                    f"{self.containerd_log_tail()}"
                )
            time.sleep(0.05)

    def _remove_containers(self) -> None:
        """Removes every container (killing it first) and its anonymous volumes."""
        with suppress(OSError, HTTPException, ValueError):
            status, body = self.request("GET", f"{COMPAT_API}/containers/json?all=1")
            if status != 200:
                return
            for container in json.loads(body):
                self.request(
                    "DELETE",
                    f"{COMPAT_API}/containers/{container['Id']}?force=1&v=1",
                    timeout=60.0,
                )


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _remove_shim_sockets(killed: list[list[str]]) -> None:
    """A shim killed with SIGKILL leaves its socket behind, at a path that
    containerd derives from its own address, the namespace and the ID."""
    for argv in killed:
        if not argv or not Path(argv[0]).name.startswith("containerd-shim"):
            continue
        options = dict(itertools.pairwise(argv))
        parts = [options.get(f"-{name}", "") for name in ("address", "namespace", "id")]
        if all(parts):
            digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
            (_SHIM_SOCKETS / digest).unlink(missing_ok=True)


def _toml_str(path: Path) -> str:
    return json.dumps(str(path))
