"""A private podman Docker-compatible API service for tests and `make run`.

``PodmanService`` runs ``podman system service`` with its own configuration,
storage, runtime state and socket under one folder, so tests never touch the
machine's default container storage. The helpers build tiny busybox images
through the service's API and write them as ``docker save`` style archives.

Install the engine with ``scripts/install-engine.sh`` (``make engine``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlencode

__all__ = [
    "BUSYBOX",
    "EngineError",
    "PodmanService",
    "build_busybox_image",
    "image_exists",
    "import_busybox_image",
    "remove_image",
    "save_images",
]

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "true", "false", "ls", "env", "id")
# Label and file that make each test image (and so its ID) unique to its ref.
REF_LABEL = "edgeloader.test.ref"
REF_FILE = "etc/edgeloader-ref"

_API = "/v1.41"
_LIBPOD_API = "/v4.0.0/libpod"
_LOG_TAIL_BYTES = 4000
# podman refuses to clean up under a longer run root.
_MAX_RUN_ROOT = 50
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def available() -> bool:
    """True when podman, runc and a static busybox are installed."""
    return bool(shutil.which("podman") and shutil.which("runc")) and _is_static_elf(BUSYBOX)


class EngineError(RuntimeError):
    """The container engine is missing, failed to start or rejected a request."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class PodmanService:
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
        self.base_dir = Path(base_dir).absolute()
        self.start_timeout = start_timeout
        self._podman = podman
        self.log_path = self.base_dir / "service.log"
        self.containers_conf = self.base_dir / "containers.conf"
        self.storage_conf = self.base_dir / "storage.conf"
        self._socket_dir = self.base_dir
        if len(str(self.base_dir / "podman.sock")) > _MAX_SOCKET_PATH:
            # pytest's tmp_path can be too long for a unix socket path.
            digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:16]
            self._socket_dir = Path(tempfile.gettempdir(), f"podman-{digest}")
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Write the configuration, start the service and wait for ``/_ping``."""
        if self._process is not None:
            raise EngineError("podman service already started")
        podman = shutil.which(self._podman)
        if podman is None:
            raise EngineError(f"{self._podman!r} not found on PATH; run scripts/install-engine.sh")
        self._write_config()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [podman, "system", "service", "--time=0", self.docker_host],
                env=self._full_env(),
                # conmon writes files (an OOM note) into the service's working folder.
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Keep Ctrl-C away from the service so stop() can still clean up.
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Remove all containers, stop the service and delete ``base_dir``.

        Safe to call more than once and after a failed :meth:`start`.
        """
        configured = self.containers_conf.exists() and self.storage_conf.exists()
        if configured and shutil.which(self._podman) is not None:
            # conmon outlives the service; removing the containers stops it.
            with suppress(subprocess.TimeoutExpired):
                self.run_podman("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        if self._process is not None:
            _terminate(self._process)
            self._process = None
        # Fallback for when podman could not clean up (e.g. the service or
        # the CLI crashed): containers run as PID 1 of their own PID namespace
        # and ignore SIGTERM, and runc keeps state in /run/runc.
        _delete_runc_containers(self.base_dir / "graph" / "vfs-containers")
        for path in self._owned_dirs():
            _kill_processes_under(path)
            _unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)

    # -- addressing --------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self._socket_dir / "podman.sock"

    @property
    def docker_host(self) -> str:
        """``unix://`` URL for ``DOCKER_HOST`` or ``aiodocker.Docker(url=...)``."""
        return f"unix://{self.socket_path}"

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

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        """One HTTP request to the API socket; returns ``(status, body)``."""
        with self.open_response(method, path, body=body, headers=headers, timeout=timeout) as r:
            return r.status, r.read()

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
            env=self._full_env(),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise EngineError(
                f"podman {' '.join(args)} exited with {result.returncode}: {_tail(result.stderr)}"
            )
        return result

    def log_tail(self) -> str:
        """The end of the service's combined stdout/stderr."""
        try:
            return _tail(self.log_path.read_bytes())
        except OSError:
            return ""

    @contextmanager
    def open_response(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Iterator[http.client.HTTPResponse]:
        """Like :meth:`request`, but yields the response unread (for large bodies)."""
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            yield conn.getresponse()
        finally:
            conn.close()

    # -- internals ---------------------------------------------------------

    def _full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

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
                stacklevel=2,
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

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise EngineError(
                    f"podman service exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _ = self.request("GET", "/_ping", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(
                    f"podman service did not answer /_ping within "
                    f"{self.start_timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)


# -- images ------------------------------------------------------------------


def import_busybox_image(service: PodmanService, ref: str) -> str:
    """Create image ``ref`` from a busybox root filesystem; returns its ID.

    The ref is stored as a label and in ``/etc/edgeloader-ref`` so that
    different refs always give different image IDs.
    """
    # The libpod endpoint honours the tag and, like the CLI, qualifies short
    # names with localhost/ (Docker's endpoint ignores the tag in podman 4).
    query = urlencode(
        [
            ("reference", ref),
            ("changes", f"LABEL {REF_LABEL}={json.dumps(ref)}"),
            ("changes", 'CMD ["/bin/sh"]'),
        ]
    )
    status, body = service.request(
        "POST",
        f"{_LIBPOD_API}/images/import?{query}",
        body=_busybox_rootfs(ref),
        headers={"Content-Type": "application/x-tar"},
        timeout=120.0,
    )
    payload = json.loads(body) if status == 200 else None
    image_id = payload.get("Id") if isinstance(payload, dict) else None
    if not isinstance(image_id, str):
        raise EngineError(f"importing {ref} failed: HTTP {status}: {_tail(body)}")
    return image_id


def save_images(service: PodmanService, refs: Sequence[str], out_tar: Path) -> Path:
    """Write ``refs`` to ``out_tar`` as one ``docker save`` archive."""
    if not refs:
        raise ValueError("save_images needs at least one ref")
    query = urlencode([("names", ref) for ref in refs])
    out_tar = Path(out_tar)
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    with service.open_response("GET", f"{_API}/images/get?{query}", timeout=120.0) as r:
        if r.status != 200:
            raise EngineError(
                f"saving {', '.join(refs)} failed: HTTP {r.status}: {_tail(r.read())}"
            )
        with out_tar.open("wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    return out_tar


def build_busybox_image(service: PodmanService, ref: str, out_tar: Path) -> Path:
    """Create busybox image ``ref`` in the engine and save it to ``out_tar``.

    The image stays in the engine; call :func:`remove_image` to test loading.
    """
    import_busybox_image(service, ref)
    return save_images(service, [ref], out_tar)


def image_exists(service: PodmanService, ref: str) -> bool:
    status, body = service.request("GET", f"{_API}/images/{_quote_ref(ref)}/json")
    if status == 404:
        return False
    if status != 200:
        raise EngineError(f"inspecting {ref} failed: HTTP {status}: {_tail(body)}")
    return True


def remove_image(service: PodmanService, ref: str, *, missing_ok: bool = True) -> None:
    """Remove image ``ref`` (and containers using it) from the engine."""
    status, body = service.request("DELETE", f"{_API}/images/{_quote_ref(ref)}?force=true")
    if status == 404 and missing_ok:
        return
    if status != 200:
        raise EngineError(f"removing {ref} failed: HTTP {status}: {_tail(body)}")


def _busybox_rootfs(ref: str) -> bytes:
    if not BUSYBOX.is_file() or not _is_static_elf(BUSYBOX):
        raise EngineError(
            f"{BUSYBOX} is missing or dynamically linked; the image has no libc, so it "
            "needs Debian's busybox-static: run scripts/install-engine.sh"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Mount points and a writable /tmp make the image usable with runc.
        for name in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            _add_entry(tar, name, tarfile.DIRTYPE, mode=0o1777 if name == "tmp" else 0o755)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in BUSYBOX_APPLETS:
            _add_entry(tar, f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox")
        _add_entry(tar, REF_FILE, tarfile.REGTYPE, data=f"{ref}\n".encode())
    return buf.getvalue()


def _is_static_elf(path: Path) -> bool:
    """False if a 64-bit little-endian ELF file names a program interpreter."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return True
        (table_offset,) = struct.unpack_from("<Q", header, 32)
        entry_size, entries = struct.unpack_from("<HH", header, 54)
        if entry_size < 4:
            return True
        f.seek(table_offset)
        table = f.read(entry_size * entries)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", table, i * entry_size)[0] != pt_interp
        for i in range(len(table) // entry_size)
    )


def _add_entry(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes,
    *,
    mode: int = 0o644,
    linkname: str = "",
    data: bytes = b"",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _quote_ref(ref: str) -> str:
    return quote(ref, safe="/:@")


# -- process and mount cleanup ----------------------------------------------


def _terminate(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _delete_runc_containers(containers_dir: Path) -> None:
    runc = shutil.which("runc")
    if runc is None or not containers_dir.is_dir():
        return
    for entry in containers_dir.iterdir():
        if entry.is_dir() and len(entry.name) == 64:
            subprocess.run(
                [runc, "delete", "--force", entry.name], capture_output=True, check=False
            )


def _kill_processes_under(path: Path) -> None:
    """SIGKILL processes whose command line mentions ``path`` (conmon, podman
    cleanup) and all their descendants (the container processes)."""
    needle = str(path).rstrip("/").encode() + b"/"
    parents: dict[int, int] = {}
    targets: list[int] = []
    for pid in _pids():
        proc = Path("/proc", str(pid))
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            stat = (proc / "stat").read_bytes()
        except OSError:
            continue
        # The command name in stat may contain spaces; PPID follows its ")".
        parents[pid] = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if needle in cmdline:
            targets.append(pid)
    # Never this process or its ancestors (their command line may name path).
    protected = {os.getpid()}
    pid = os.getpid()
    while (pid := parents.get(pid, 0)) > 0:
        protected.add(pid)
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    doomed: list[int] = []
    while targets:
        pid = targets.pop()
        if pid not in protected:
            doomed.append(pid)
            targets.extend(children.get(pid, []))
    # Children first, so that nothing is re-parented half way.
    for pid in reversed(doomed):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _unmount_under(path: Path) -> None:
    prefix = str(path).rstrip("/") + "/"
    mounts = [m for m in _mount_points() if (m + "/").startswith(prefix)]
    # Deepest first so that parents are not busy.
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)


def _mount_points() -> list[str]:
    points: list[str] = []
    with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(_unescape_mount_path(fields[4]))
    return points


def _unescape_mount_path(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def _toml_str(path: Path) -> str:
    return json.dumps(str(path))


def _tail(data: bytes, limit: int = _LOG_TAIL_BYTES) -> str:
    return data[-limit:].decode("utf-8", errors="replace").strip()
