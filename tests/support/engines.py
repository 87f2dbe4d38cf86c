"""What the private engine services for tests and `make run` share.

Two engines, one surface: :class:`tests.support.podman.PodmanService` (a
``podman system service``) and :class:`tests.support.docker.DockerService`
(a ``dockerd``). Both keep everything under one folder, answer Docker's API
on a unix socket, and derive from :class:`EngineService`, which holds the
HTTP-over-unix-socket client and the clean-up of processes and mounts.

The image helpers below work on either: they build tiny busybox images
through the engine's API (podman's libpod import, Docker's
``POST /images/create?fromSrc=-``) and write them as ``docker save``
archives through the compatible API.

Install the engines with ``scripts/install-engine.sh`` (``make engine``).
"""

from __future__ import annotations

import abc
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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote, urlencode

__all__ = [
    "BUSYBOX",
    "EngineError",
    "EngineKind",
    "EngineService",
    "build_busybox_image",
    "busybox_rootfs",
    "busybox_static",
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

# Docker 20.10's API version; podman 4 answers it too.
COMPAT_API = "/v1.41"
LIBPOD_API = "/v4.0.0/libpod"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
_LOG_TAIL_BYTES = 4000

EngineKind = Literal["podman", "docker"]


class EngineError(RuntimeError):
    """The container engine is missing, failed to start or rejected a request."""


def busybox_static() -> bool:
    """True when ``/bin/busybox`` is a static binary (Debian's busybox-static)."""
    return BUSYBOX.is_file() and _is_static_elf(BUSYBOX)


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


class EngineService(abc.ABC):
    """An engine's API service with everything under ``base_dir``.

    Subclasses say which engine (:attr:`kind`), where its socket is, how it
    starts (:meth:`_prepare` returns the command line) and how it stops.
    """

    def __init__(self, base_dir: Path, *, start_timeout: float) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.start_timeout = start_timeout
        self.log_path = self.base_dir / "service.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- what a subclass says ----------------------------------------------

    @property
    @abc.abstractmethod
    def kind(self) -> EngineKind:
        """Which engine answers: ``"podman"`` or ``"docker"``."""

    @property
    @abc.abstractmethod
    def socket_path(self) -> Path:
        """The API's unix socket."""

    @abc.abstractmethod
    def _prepare(self) -> list[str]:
        """Writes what the service needs before it starts; returns its command."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Removes all containers, stops the service and deletes ``base_dir``.

        Safe to call more than once and after a failed :meth:`start`.
        """

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
        """Prepares and starts the service, and waits for ``/_ping``."""
        if self._process is not None:
            raise EngineError(f"{self.kind} service already started")
        try:
            command = self._prepare()
            with self.log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    command,
                    env=self._service_env(),
                    # conmon writes files (an OOM note) into the service's working folder.
                    cwd=self.base_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Keep Ctrl-C away from the service so stop() can still clean up.
                    start_new_session=True,
                )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    # -- addressing --------------------------------------------------------

    @property
    def docker_host(self) -> str:
        """``unix://`` URL for ``DOCKER_HOST`` or ``aiodocker.Docker(url=...)``."""
        return f"unix://{self.socket_path}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Docker clients (and the engine's CLI) at this
        service. Merge them into ``os.environ`` for subprocesses."""
        return {"DOCKER_HOST": self.docker_host}

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

    def log_tail(self) -> str:
        """The end of the service's combined stdout/stderr."""
        try:
            return tail(self.log_path.read_bytes())
        except OSError:
            return ""

    # -- for subclasses ----------------------------------------------------

    def _service_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _short_dir(self, longest: str) -> Path:
        """``base_dir``, or a folder in the system's temporary folder when
        ``base_dir / longest`` is too long a path for a unix socket (pytest's
        ``tmp_path`` can be)."""
        if len(str(self.base_dir / longest)) <= MAX_SOCKET_PATH:
            return self.base_dir
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir(), f"{self.kind}-{digest}")

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise EngineError(
                    f"{self.kind} service exited with {self._process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            try:
                status, _ = self.request("GET", "/_ping", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{self.kind} service did not answer /_ping within "
                    f"{self.start_timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _stop_process(self, grace: float = 10.0) -> None:
        if self._process is not None:
            terminate(self._process, grace)
            self._process = None


# -- images ------------------------------------------------------------------


def import_busybox_image(service: EngineService, ref: str, changes: Sequence[str] = ()) -> str:
    """Create image ``ref`` from a busybox root filesystem; returns its ID
    (``sha256:…``). ``changes`` are more Dockerfile lines (``VOLUME /data``).

    The ref is stored as a label and in ``/etc/edgeloader-ref`` so that
    different refs always give different image IDs. The image's command is
    ``/bin/sh``.
    """
    changes = [f"LABEL {REF_LABEL}={json.dumps(ref)}", 'CMD ["/bin/sh"]', *changes]
    if service.kind == "podman":
        return _import_libpod(service, ref, changes)
    return _import_docker(service, ref, changes)


def _import_libpod(service: EngineService, ref: str, changes: list[str]) -> str:
    # The libpod endpoint honours the tag and, like the CLI, qualifies short
    # names with localhost/ (Docker's endpoint ignores the tag in podman 4).
    query = urlencode([("reference", ref), *(("changes", change) for change in changes)])
    status, body = service.request(
        "POST",
        f"{LIBPOD_API}/images/import?{query}",
        body=busybox_rootfs(ref),
        headers={"Content-Type": "application/x-tar"},
        timeout=120.0,
    )
    payload = json.loads(body) if status == 200 else None
    image_id = payload.get("Id") if isinstance(payload, dict) else None
    if not isinstance(image_id, str):
        raise EngineError(f"importing {ref} failed: HTTP {status}: {tail(body)}")
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def _import_docker(service: EngineService, ref: str, changes: list[str]) -> str:
    repo, tag = _split_tag(ref)
    query = urlencode(
        [("fromSrc", "-"), ("repo", repo), ("tag", tag), *(("changes", c) for c in changes)]
    )
    status, body = service.request(
        "POST",
        f"{COMPAT_API}/images/create?{query}",
        body=busybox_rootfs(ref),
        headers={"Content-Type": "application/x-tar"},
        timeout=120.0,
    )
    # A 200 stream of JSON objects: progress, then {"status": "sha256:…"},
    # or an errorDetail.
    image_id = None
    if status == 200:
        for item in _json_objects(body):
            if item.get("errorDetail") or item.get("error"):
                image_id = None
                break
            text = item.get("status")
            if isinstance(text, str) and text.startswith("sha256:"):
                image_id = text
    if image_id is None:
        raise EngineError(f"importing {ref} failed: HTTP {status}: {tail(body)}")
    return image_id


def save_images(service: EngineService, refs: Sequence[str], out_tar: Path) -> Path:
    """Write ``refs`` to ``out_tar`` as one ``docker save`` archive."""
    if not refs:
        raise ValueError("save_images needs at least one ref")
    query = urlencode([("names", ref) for ref in refs])
    out_tar = Path(out_tar)
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    with service.open_response("GET", f"{COMPAT_API}/images/get?{query}", timeout=120.0) as r:
        if r.status != 200:
            raise EngineError(f"saving {', '.join(refs)} failed: HTTP {r.status}: {tail(r.read())}")
        with out_tar.open("wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    return out_tar


def build_busybox_image(service: EngineService, ref: str, out_tar: Path) -> Path:
    """Create busybox image ``ref`` in the engine and save it to ``out_tar``.

    The image stays in the engine; call :func:`remove_image` to test loading.
    """
    import_busybox_image(service, ref)
    return save_images(service, [ref], out_tar)


def image_exists(service: EngineService, ref: str) -> bool:
    status, body = service.request("GET", f"{COMPAT_API}/images/{_quote_ref(ref)}/json")
    if status == 404:
        return False
    if status != 200:
        raise EngineError(f"inspecting {ref} failed: HTTP {status}: {tail(body)}")
    return True


def remove_image(service: EngineService, ref: str, *, missing_ok: bool = True) -> None:
    """Remove image ``ref`` (and containers using it) from the engine."""
    status, body = service.request("DELETE", f"{COMPAT_API}/images/{_quote_ref(ref)}?force=true")
    if status == 404 and missing_ok:
        return
    if status != 200:
        raise EngineError(f"removing {ref} failed: HTTP {status}: {tail(body)}")


def busybox_rootfs(ref: str) -> bytes:
    """A tar of a root filesystem with a static busybox and ``ref`` in
    ``/etc/edgeloader-ref``."""
    if not busybox_static():
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


def _split_tag(ref: str) -> tuple[str, str]:
    """``repo:tag`` → ``(repo, tag)``; no tag is ``latest``. A port in the
    registry's host (``host:5000/name``) is not a tag."""
    if "@" in ref:
        raise ValueError(f"cannot import under a digest reference: {ref}")
    repo, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return ref, "latest"


def _json_objects(body: bytes) -> Iterator[dict[str, object]]:
    for line in body.splitlines():
        with suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                yield item


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


# -- process and mount clean-up ---------------------------------------------


def terminate(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def delete_runc_containers(state_root: Path | None, ids: Sequence[str]) -> None:
    """``runc delete --force`` each of ``ids``: kills what still runs in the
    container and removes its cgroups (``state_root`` is runc's ``--root``,
    None for its default, /run/runc)."""
    runc = shutil.which("runc")
    if runc is None:
        return
    root = [] if state_root is None else ["--root", str(state_root)]
    for container_id in ids:
        subprocess.run(
            [runc, *root, "delete", "--force", container_id], capture_output=True, check=False
        )


def kill_processes_under(path: Path) -> list[list[str]]:
    """SIGKILL processes whose command line mentions ``path`` (conmon, podman
    cleanup, containerd and its shims) and all their descendants (the
    container processes). Returns the command lines of those killed."""
    needle = str(path).rstrip("/").encode() + b"/"
    parents: dict[int, int] = {}
    cmdlines: dict[int, bytes] = {}
    targets: list[int] = []
    for pid in _pids():
        proc = Path("/proc", str(pid))
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_bytes()
        except OSError:
            continue
        # The command name in stat may contain spaces; PPID follows its ")".
        parents[pid] = int(stat[stat.rindex(b")") + 2 :].split()[1])
        cmdlines[pid] = cmdline
        if needle in cmdline.replace(b"\0", b" "):
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
        if pid not in protected and pid not in doomed:
            doomed.append(pid)
            targets.extend(children.get(pid, []))
    killed: list[list[str]] = []
    # Children first, so that nothing is re-parented half way.
    for pid in reversed(doomed):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            argv = cmdlines[pid].rstrip(b"\0").split(b"\0")
            killed.append([arg.decode(errors="surrogateescape") for arg in argv])
    return killed


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def unmount_under(path: Path) -> None:
    """Lazily unmounts everything mounted at or below ``path``."""
    top = str(path).rstrip("/")
    prefix = top + "/"
    mounts = [m for m in mount_points() if m == top or m.startswith(prefix)]
    # Deepest first so that parents are not busy.
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)


def mount_points() -> list[str]:
    """This process's mount points, from ``/proc/self/mountinfo``."""
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


def remove_tree(path: Path) -> None:
    """Kills what runs from ``path``, unmounts what is mounted under it and
    deletes it."""
    kill_processes_under(path)
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def tail(data: bytes, limit: int = _LOG_TAIL_BYTES) -> str:
    return data[-limit:].decode("utf-8", errors="replace").strip()
