"""Client of the container engine (aiodocker on ``DOCKER_HOST``).

Works with Docker's engine and with podman's Docker-compatible service.
Every call goes through :func:`_mapped`, the one place where aiodocker's,
aiohttp's and the OS's errors become ours:

- a connection failure is "engine unreachable";
- a 404 is :class:`NotFound`, for the calls where absence is an answer;
- our own error raised inside a streamed request body (say, a decryption
  failure while an archive uploads) reaches us wrapped in transport errors,
  and is dug out and raised as itself;
- anything else is :class:`EngineError` naming the operation.

An image load goes to podman's native (libpod) load when podman answers,
and to the compatible one otherwise (see :class:`LoadApi`). Its errors come
back in two shapes: Docker reports them as an ``errorDetail`` item inside a
200 stream, podman (either API) as an HTTP error; both become
:class:`EngineError`.

Function runs (``edgeloader.functions``) create, start, wait on, kill and
remove containers here, and build images. Which engine answers is detected
at run time: with podman, containers are created, waited on and built
through its native (libpod) API, which says what the compatible one cannot
(see :func:`_libpod_container`); Docker's engine gets the compatible API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from edgeloader.errors import (
    BuildFailed,
    EdgeloaderError,
    EngineError,
    NotFound,
    ValidationFailed,
)

log = logging.getLogger(__name__)

# aiodocker's status for "could not connect to the engine".
_CANNOT_CONNECT = 900
# Podman's native API; podman 4 and 5 both answer under this version.
_LIBPOD = "v4.0.0/libpod"
# Podman's Docker-compatible wait polls the container without pause (a whole
# core per waiting run); the native wait polls at an interval. Each poll
# takes the container's lock, and polling every few milliseconds slows the
# container's own exit handling (measured: a trivial run took longer at 5 ms
# than at 25 or 50 ms), so: every 25 ms at first, then seldom.
_WAIT_STEPS: tuple[tuple[str, float | None], ...] = (
    ("25ms", 2.0),
    ("100ms", 30.0),
    ("250ms", None),
)
_CPU_PERIOD = 100_000  # microseconds; the CPU quota is a share of it
_BUILD_LINES = 15  # lines of build output kept for an error
_MAX_LINE = 64 * 1024  # a longer build output line is cut
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)
_CONTAINER_TMP = "/tmp"  # noqa: S108 - the container's own /tmp, a capped tmpfs


def _find_cause(exc: BaseException) -> EdgeloaderError | None:
    """Our own error somewhere in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EdgeloaderError):
            return current
        stack += [current.__cause__, current.__context__]
    return None


class LoadApi(enum.Enum):
    """The engine's endpoint for an image load.

    Both of podman's spool the whole upload into the service's ``TMPDIR``
    and load it only when it is complete, equally fast within the noise of
    our measurements (docs/performance.md, P3); the native one is podman's
    own and lists the images it loaded. Docker's engine has only the
    compatible one.
    """

    COMPATIBLE = "compatible"  # POST /images/load, Docker's API
    LIBPOD = "libpod"  # POST /libpod/images/load, podman's own


@dataclass(frozen=True)
class ContainerSpec:
    """A function run's container.

    The isolation is not a field, so no caller can weaken it: every
    container has no network, a read-only root with ``/tmp`` a capped
    tmpfs, no capabilities, ``no-new-privileges``, user and group ``uid``,
    no devices and no mount but ``folder`` (read-write at ``workdir``).
    """

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


@dataclass(frozen=True)
class ContainerExit:
    code: int
    oom_killed: bool  # as the engine reports it (podman 4 never does)
    running: bool = False


@dataclass(frozen=True)
class CapturedOutput:
    stdout: bytes
    stderr: bytes
    truncated: bool


class Engine:
    def __init__(self, docker_host: str | None) -> None:
        self.docker_host = docker_host
        self._docker: aiodocker.Docker | None = None
        self._podman: bool | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        # Created lazily: aiodocker needs a running loop, and a box without
        # an engine should still serve models.
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self.docker_host)
            except (AssertionError, ValueError):
                # aiodocker asserts when neither DOCKER_HOST nor a default
                # socket exists: a box without an engine, not a bug.
                raise EngineError(
                    "no container engine: set DOCKER_HOST (none is set, and no default "
                    "socket exists)"
                ) from None
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    @contextlib.contextmanager
    def _mapped(
        self,
        what: str,
        *,
        missing: str | None = None,
        invalid: str | None = None,
        ignore: Collection[int] = (),
        refused: type[EdgeloaderError] = EngineError,
    ) -> Iterator[None]:
        """Maps lower layers' errors to ours; ``missing`` words a 404, and
        ``invalid`` a 400 (the caller's input was refused: a 422, not a 502).

        An engine answer whose status is in ``ignore`` is no error (the
        block ends there); any other refusal becomes ``refused``.
        """
        try:
            yield
        except EdgeloaderError:
            raise
        except aiodocker.DockerError as exc:
            cause = _find_cause(exc)
            if cause is not None:
                raise cause from None
            if exc.status == _CANNOT_CONNECT or isinstance(
                exc.__context__, aiohttp.ClientConnectionError
            ):
                raise self._unreachable(exc) from exc
            if exc.status in ignore:
                return
            if exc.status == 404 and missing is not None:
                raise NotFound(missing) from None
            if exc.status == 400 and invalid is not None:
                raise ValidationFailed(f"{invalid}: {exc.message}") from None
            raise refused(f"{what} failed: {exc.message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            cause = _find_cause(exc)
            if cause is not None:
                raise cause from None
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> EngineError:
        where = self.docker_host or "the default socket"
        return EngineError(f"container engine unreachable at {where}: {exc}")

    # Images

    async def load_api(self) -> LoadApi:
        """The fastest image load this engine offers."""
        return LoadApi.LIBPOD if await self.is_podman() else LoadApi.COMPATIBLE

    async def load(self, archive: AsyncIterable[bytes], api: LoadApi | None = None) -> list[str]:
        """Streams a ``docker save`` archive into the engine's image load,
        through ``api`` or else the one :meth:`load_api` chooses.

        Returns the engine's messages. There is no total timeout: a big
        archive on a slow device may take minutes.
        """
        if (api or await self.load_api()) is LoadApi.LIBPOD:
            return await self._load_libpod(archive)
        return await self._load_compatible(archive)

    async def _load_libpod(self, archive: AsyncIterable[bytes]) -> list[str]:
        with self._mapped("image load"):
            async with self.docker._query(
                f"{_LIBPOD}/images/load",
                "POST",
                data=archive,
                headers={"Content-Type": "application/x-tar"},
                timeout=_NO_TIMEOUT,
                chunked=True,
                versioned_api=False,
            ) as resp:
                answer = await resp.read()
        return [f"Loaded image: {name}" for name in _loaded_names(answer)]

    async def _load_compatible(self, archive: AsyncIterable[bytes]) -> list[str]:
        messages: list[str] = []
        with self._mapped("image load"):
            stream = self.docker.images.import_image(data=archive, stream=True, timeout=None)
            async for item in stream:
                if not isinstance(item, dict):
                    continue
                error = item.get("errorDetail") or item.get("error")
                if error:
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise EngineError(f"image load failed: {detail}")
                text = str(item.get("stream") or item.get("status") or "").strip()
                if text:
                    messages.append(text)
        return messages

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        """The engine's record of an image; :class:`NotFound` if it has none."""
        with self._mapped(
            "image inspect",
            missing=f"image {ref} is not in the engine",
            invalid=f"image {ref!r} is not a reference the engine accepts",
        ):
            info: dict[str, Any] = await self.docker.images.inspect(ref)
        return info

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
        with self._mapped("image list"):
            images: list[dict[str, Any]] = await self.docker.images.list(all=True)
        return {str(img.get("Id")) for img in images}

    async def remove_images(self, ids: set[str]) -> None:
        """Best-effort removal, used to clean up after a failed load."""
        for image_id in ids:
            try:
                with self._mapped("image remove"):
                    await self.docker.images.delete(image_id, force=True)
                log.info("removed partially loaded image %s", image_id)
            except EdgeloaderError:
                log.warning("could not remove image %s", image_id, exc_info=True)

    # Containers (function runs)

    async def is_podman(self) -> bool:
        """Whether podman answers (detected once, from ``GET /version``)."""
        if self._podman is None:
            with self._mapped("engine version"):
                version: dict[str, Any] = await self.docker.version()
            names = [str(c.get("Name", "")) for c in version.get("Components") or []]
            self._podman = any("podman" in name.lower() for name in names)
        return self._podman

    async def create_container(self, spec: ContainerSpec) -> str:
        """Creates (does not start) the container; returns its ID."""
        if spec.uid <= 0:
            raise ValueError("a function never runs as root")
        with self._mapped("container create", missing=f"image {spec.image} is not in the engine"):
            if await self.is_podman():
                body = json.dumps(_libpod_container(spec))
                async with self.docker._query(
                    f"{_LIBPOD}/containers/create", "POST", data=body, versioned_api=False
                ) as resp:
                    created: dict[str, Any] = await resp.json()
                return str(created["Id"])
            container = await self.docker.containers.create(_docker_container(spec), name=spec.name)
            return str(container.id)

    async def start_container(self, container_id: str) -> None:
        with self._mapped("container start"):
            await self.docker.containers.container(container_id).start()

    async def wait_container(self, container_id: str) -> None:
        """Returns once the container has stopped; no timeout of its own."""
        with self._mapped("container wait", missing=f"container {container_id} is gone"):
            if not await self.is_podman():
                await self.docker.containers.container(container_id).wait(timeout=_NO_TIMEOUT)
                return
            for interval, within in _WAIT_STEPS:
                try:
                    async with asyncio.timeout(within):
                        async with self.docker._query(
                            f"{_LIBPOD}/containers/{container_id}/wait",
                            "POST",
                            params={"interval": interval},
                            timeout=_NO_TIMEOUT,
                            versioned_api=False,
                        ) as resp:
                            await resp.read()
                            return
                except TimeoutError:
                    continue  # still running: wait again, polling less often

    async def kill_container(self, container_id: str) -> None:
        """SIGKILL; a container that has already stopped is no error."""
        try:
            with self._mapped("container kill", ignore=(404, 409)):
                await self.docker.containers.container(container_id).kill(signal="KILL")
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
        with self._mapped("container inspect", missing=f"container {container_id} is gone"):
            info: dict[str, Any] = await self.docker.containers.container(container_id).show()
        state: dict[str, Any] = info.get("State") or {}
        return state

    async def container_output(self, container_id: str, limit: int) -> CapturedOutput:
        """The first ``limit`` bytes of stdout and of stderr.

        Read as a stream and cut at ``limit``, so memory does not grow with
        the output; after a few times ``limit`` of cut output the rest is
        not read at all.
        """
        with self._mapped("container logs", missing=f"container {container_id} is gone"):
            async with self.docker._query(
                f"containers/{container_id}/logs",
                params={"stdout": "1", "stderr": "1"},
                timeout=_NO_TIMEOUT,
            ) as resp:
                return await _demultiplex(resp.content, limit)

    async def remove_container(self, container_id: str) -> None:
        """Removes the container, killing it first if it runs; gone is no error."""
        with self._mapped("container remove", ignore=(404,)):
            if await self.is_podman():
                # The compatible API's forced removal sends SIGTERM and waits
                # 10 s before SIGKILL; a function's PID 1 may ignore SIGTERM.
                async with self.docker._query(
                    f"{_LIBPOD}/containers/{container_id}",
                    "DELETE",
                    params={"force": "true", "timeout": "0"},
                    versioned_api=False,
                ):
                    return
            await self.docker.containers.container(container_id).delete(force=True)

    async def labelled_containers(self, label: str) -> dict[str, str]:
        """Every container carrying ``label``, running or not: ID → label value."""
        with self._mapped("container list"):
            items: list[dict[str, Any]] = await self.docker._query_json(
                "containers/json",
                params={"all": "true", "filters": json.dumps({"label": [label]})},
            )
        return {str(c["Id"]): str((c.get("Labels") or {}).get(label, "")) for c in items}

    async def build_image(
        self, context: AsyncIterable[bytes], tag: str, labels: Mapping[str, str]
    ) -> None:
        """Builds ``tag`` from a tar ``context`` with no network.

        With podman, base images are never pulled (its compatible API can
        only say "pull if missing"); callers check that they are local, which
        also covers Docker's engine. A failed build is :class:`BuildFailed`
        with the engine's last lines.
        """
        params = {
            "t": tag,
            "networkmode": "none",
            "rm": "true",
            "forcerm": "true",
            "labels": json.dumps(dict(labels)),
        }
        podman = await self.is_podman()
        if podman:
            params["pullpolicy"] = "never"
        lines: collections.deque[str] = collections.deque(maxlen=_BUILD_LINES)
        with self._mapped("image build", refused=BuildFailed):
            async with self.docker._query(
                f"{_LIBPOD}/build" if podman else "build",
                "POST",
                params=params,
                data=context,
                headers={"Content-Type": "application/x-tar"},
                timeout=_NO_TIMEOUT,
                versioned_api=not podman,
            ) as resp:
                async for item in _json_lines(resp.content):
                    error = item.get("errorDetail") or item.get("error")
                    if error:
                        detail = error.get("message") if isinstance(error, dict) else error
                        lines.append(str(detail).strip())
                        raise BuildFailed("image build failed:\n" + "\n".join(lines))
                    text = item.get("stream")
                    if isinstance(text, str):
                        lines.extend(line for line in text.splitlines() if line.strip())


def _libpod_container(spec: ContainerSpec) -> dict[str, Any]:
    """Podman's native create, which says what its compatible one cannot:
    no tmpfs of its own on ``/var/tmp`` and ``/run`` under the read-only
    root, no ``/etc/passwd`` and ``/etc/hosts`` mounts, the image's
    ``VOLUME``s ignored."""
    user = f"{spec.uid}:{spec.uid}"
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "env": dict(spec.env),
        "labels": dict(spec.labels),
        "user": user,
        "work_dir": spec.workdir,
        "netns": {"nsmode": "none"},
        "read_only_filesystem": True,
        "read_write_tmpfs": False,
        "use_image_hosts": True,
        "manage_password": False,
        "image_volume_mode": "ignore",
        "mounts": [
            {
                "destination": _CONTAINER_TMP,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": [f"size={spec.tmpfs_bytes}", "mode=1777", "nosuid", "nodev"],
            },
            {
                "destination": spec.workdir,
                "type": "bind",
                "source": str(spec.folder),
                "options": ["rbind", "rw", "nosuid", "nodev"],
            },
        ],
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        "privileged": False,
        "devices": [],
        "shm_size": spec.tmpfs_bytes,
        "resource_limits": {
            "pids": {"limit": spec.pids},
            "memory": {"limit": spec.memory_bytes, "swap": spec.memory_bytes},
            "cpu": {"quota": round(spec.cpus * _CPU_PERIOD), "period": _CPU_PERIOD},
        },
    }
    if spec.command:
        body["command"] = list(spec.command)
    return body


def _docker_container(spec: ContainerSpec) -> dict[str, Any]:
    """Docker's create; its engine adds no mounts of its own under a
    read-only root."""
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "User": f"{spec.uid}:{spec.uid}",
        "WorkingDir": spec.workdir,
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "Tmpfs": {_CONTAINER_TMP: f"rw,nosuid,nodev,size={spec.tmpfs_bytes},mode=1777"},
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "Devices": [],
            "ShmSize": spec.tmpfs_bytes,
            "PidsLimit": spec.pids,
            "Memory": spec.memory_bytes,
            "MemorySwap": spec.memory_bytes,
            "NanoCpus": round(spec.cpus * 1e9),
            "Mounts": [{"Type": "bind", "Source": str(spec.folder), "Target": spec.workdir}],
        },
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    return config


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


async def _demultiplex(stream: aiohttp.StreamReader, limit: int) -> CapturedOutput:
    """Splits the engine's log stream (8-byte frame headers: stream type,
    then the payload's length) into stdout and stderr, each cut at ``limit``."""
    kept = {1: bytearray(), 2: bytearray()}
    truncated = False
    skipped = 0
    while skipped <= 4 * limit:
        try:
            header = await stream.readexactly(8)
        except asyncio.IncompleteReadError:
            break
        size = int.from_bytes(header[4:8], "big")
        # 1 is stdout; 2 stderr and 3 the engine's own errors go to stderr.
        buffer = kept[1] if header[0] == 1 else kept[2]
        take = min(size, limit - len(buffer))
        if take > 0:
            buffer += await stream.readexactly(take)
        rest = size - take
        if rest:
            truncated = True
            skipped += rest
            while rest:
                chunk = await stream.read(min(rest, 1 << 16))
                if not chunk:
                    break
                rest -= len(chunk)
    return CapturedOutput(bytes(kept[1]), bytes(kept[2]), truncated)


async def _json_lines(stream: aiohttp.StreamReader) -> AsyncIterable[dict[str, Any]]:
    """The JSON objects of a line-delimited stream; lines past ``_MAX_LINE``
    are cut, and lines that are not JSON objects are skipped."""
    pending = b""
    while True:
        chunk = await stream.read(1 << 16)
        data = pending + chunk
        *complete, pending = data.split(b"\n")
        if len(pending) > _MAX_LINE:
            complete.append(pending[:_MAX_LINE])
            pending = b""
        if not chunk and pending:
            complete.append(pending)
            pending = b""
        for line in complete:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item
        if not chunk:
            return
