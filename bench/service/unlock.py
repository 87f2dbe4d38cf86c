"""P3: POST /unlock of an encrypted docker-archive into an engine (podman,
Docker Engine) against the engine's CLI load of the plain archive (`podman
load -i`, `docker load -i`) and against the plain archive sent to each of the
engine's HTTP image loads (the compatible one; podman's native one too).

The engine's spool is on tmpfs, as docs/deployment.md tells: podman's API
writes every upload to its ``TMPDIR`` before it loads it (and its load
unpacks the archive there once more); Docker unpacks the upload into its
``DOCKER_TMPDIR``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from tests.support.docker import DockerService
from tests.support.engines import (
    BUSYBOX,
    EngineKind,
    EngineService,
    image_exists,
    remove_image,
    save_images,
)
from tests.support.harness.processes import Child
from tests.support.podman import PodmanService

from bench.service import CHUNK, NO_TIMEOUT, BenchError, MiB, log
from bench.service.measure import Watcher, proc_status_bytes
from bench.service.signed import sign_release
from bench.service.stack import EMAIL, PASSWORD, Upstream, login, start_loader
from edgeloader.crypto import segments_name
from edgeloader.services.manifest import ARCHIVE_KEY
from edgeloader.storage.files import read_file_chunks
from edgeloader_publisher.archive import encrypt_archive
from edgeloader_publisher.release import archive_artifact
from edgeloader_publisher.resource_api.server import KEY_FRAGMENT_FILE

IMAGE_REPO = "localhost/edgeloader-bench"
IMAGE_REF = f"{IMAGE_REPO}:latest"
LIBPOD_API = "/v4.0.0/libpod"
DOCKER_API = "/v1.41"  # what the loader's client (aiodocker) negotiates with podman 4
POLL_SECONDS = 0.05  # /unlock/status
CLI, UNLOCK = "CLI load -i", "loader /unlock"
SIGNED = "loader /unlock, signed"  # under a release: every segment verified as it streams
API, LIBPOD = "compat /images/load", "libpod /images/load"  # the engine's HTTP loads
API_PATHS = {API: f"{DOCKER_API}/images/load", LIBPOD: f"{LIBPOD_API}/images/load"}
ENGINE_TMPFS = Path("/dev/shm")  # where the engine's spool goes, as documented


class BenchPodman(PodmanService):
    """A PodmanService whose processes (service and CLI) use their own TMPDIR
    on tmpfs, so the bytes the engine buffers there can be watched."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.tmpdir = engine_tmpfs()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        return super().env | {"TMPDIR": str(self.tmpdir)}

    def load_cli(self, archive: Path) -> None:
        self.run_podman("load", "-i", str(archive), timeout=1800)


class BenchDocker(DockerService):
    """A DockerService whose daemon spools uploads (``DOCKER_TMPDIR``) on tmpfs."""

    def __init__(self, base_dir: Path) -> None:
        self.tmpdir = engine_tmpfs()
        super().__init__(base_dir, tmp_dir=self.tmpdir)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def load_cli(self, archive: Path) -> None:
        self.run_docker("load", "-i", str(archive), timeout=1800)


BenchEngine = BenchPodman | BenchDocker


def engine_tmpfs() -> Path:
    if not ENGINE_TMPFS.is_dir():
        raise BenchError(f"P3 puts the engine's spool on tmpfs: {ENGINE_TMPFS} is missing")
    return Path(tempfile.mkdtemp(prefix="edgeloader-bench-engine-", dir=ENGINE_TMPFS))


@dataclass
class P3Run:
    seconds: float
    temp_bytes: dict[str, int]
    phases: dict[str, float] = field(default_factory=dict)  # first time each state was seen
    rss: int = 0


@dataclass
class P3Result:
    kind: EngineKind
    plain_bytes: int
    runs: dict[str, list[P3Run]]  # per method: CLI, API (LIBPOD), UNLOCK, SIGNED
    peak_rss: int
    engine_version: str
    api_methods: tuple[str, ...]  # the engine's HTTP loads
    engine_tmpdir: str = str(ENGINE_TMPFS)


# -- the image ------------------------------------------------------------------


class _RandomBytes(io.RawIOBase):
    """An endless incompressible stream."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view[:] = os.urandom(len(view))
        return len(view)


def write_rootfs(path: Path, payload: int) -> None:
    """A root filesystem: busybox, ``sh`` and ``payload`` random bytes."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("bin", "dev", "etc", "opt", "proc", "sys", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
        info = tarfile.TarInfo("opt/payload.bin")
        info.size, info.mode = payload, 0o644
        tar.addfile(info, io.BufferedReader(_RandomBytes(), CHUNK))


async def post_tar(service: EngineService, path: str, body: Any, what: str) -> None:
    """POST a tar ``body`` (a file or an async iterator) to the engine's API."""
    connector = aiohttp.UnixConnector(path=str(service.socket_path))
    async with (
        aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as http,
        http.post(
            f"http://podman{path}", data=body, headers={"Content-Type": "application/x-tar"}
        ) as resp,
    ):
        text = await resp.text()
        if resp.status != 200:
            raise BenchError(f"{what}: HTTP {resp.status}: {text[-2000:]}")


async def import_rootfs(service: EngineService, rootfs: Path) -> None:
    """The engine's image import (libpod's, or Docker's create from a
    source), the body streamed from the file."""
    if service.kind == "podman":
        query = urlencode([("reference", IMAGE_REF), ("changes", 'CMD ["/bin/sh"]')])
        path = f"{LIBPOD_API}/images/import?{query}"
    else:
        query = urlencode(
            [
                ("fromSrc", "-"),
                ("repo", IMAGE_REPO),
                ("tag", "latest"),
                ("changes", 'CMD ["/bin/sh"]'),
            ]
        )
        path = f"{DOCKER_API}/images/create?{query}"
    body = await asyncio.to_thread(open, rootfs, "rb")
    try:
        await post_tar(service, path, body, "image import")
    finally:
        body.close()


async def build_archives(
    service: BenchEngine, work: Path, size: int, fragment: bytes
) -> tuple[Path, Path]:
    """``images.tar`` (docker save of one ~``size`` image) and its ``images.enc``."""
    rootfs, plain, encrypted = work / "rootfs.tar", work / "images.tar", work / "images.enc"
    log(f"P3: writing a rootfs with {size // MiB} MiB of random data")
    await asyncio.to_thread(write_rootfs, rootfs, size)
    log(f"P3: importing it into {service.kind}")
    await import_rootfs(service, rootfs)
    await asyncio.to_thread(rootfs.unlink)
    log("P3: saving the image as a docker-archive")
    await asyncio.to_thread(save_images, service, [IMAGE_REF], plain)
    log("P3: encrypting the archive")
    await encrypt_archive(plain, encrypted, fragment)
    return plain, encrypted


# -- the four methods -------------------------------------------------------------


async def cli_load(service: BenchEngine, plain: Path, folders: dict[str, Path]) -> P3Run:
    """The baseline: ``podman load -i`` or ``docker load -i`` (the CLI, same storage)."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    with Watcher(folders) as watch:
        start = time.perf_counter()
        await asyncio.to_thread(service.load_cli, plain)
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes)


async def api_load(service: BenchEngine, plain: Path, folders: dict[str, Path], path: str) -> P3Run:
    """The plain archive through one of the engine's HTTP image loads,
    streamed chunked in 1 MiB pieces like the loader does: the engine's own
    cost of that API path, without any decryption."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    phases: dict[str, float] = {}
    start = 0.0

    async def body() -> AsyncIterator[bytes]:
        async for chunk in read_file_chunks(plain, CHUNK):
            yield chunk
        phases["loading_images"] = time.perf_counter() - start

    with Watcher(folders) as watch:
        start = time.perf_counter()
        await post_tar(service, path, body(), f"image load ({path})")
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes, phases)


async def unlock(
    http: aiohttp.ClientSession,
    url: str,
    auth: dict[str, str],
    service: BenchEngine,
    loader: Child,
    folders: dict[str, Path],
) -> P3Run:
    """POST /unlock, then /unlock/status every 50 ms until ready."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    phases: dict[str, float] = {}
    with Watcher(folders, loader.pid) as watch:
        start = time.perf_counter()
        creds = {"email": EMAIL, "password": PASSWORD}
        async with http.post(f"{url}/unlock", json=creds, headers=auth) as r:
            if r.status != 200:
                raise BenchError(f"/unlock: HTTP {r.status}: {await r.text()}")
        while True:
            async with http.get(f"{url}/unlock/status", headers=auth) as r:
                status = await r.json()
            phases.setdefault(status["state"], time.perf_counter() - start)
            if status["state"] == "ready":
                break
            if status["state"] == "error":
                raise BenchError(f"unlock failed: {status['error']}")
            await asyncio.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes, phases, watch.peak_rss)


async def _check_loaded(service: EngineService) -> None:
    if not await asyncio.to_thread(image_exists, service, IMAGE_REF):
        raise BenchError(f"the load did not create {IMAGE_REF}")


async def bench_p3(
    upstream: Upstream,
    kind: EngineKind,
    size: int,
    runs: int,
    work: Path,
    cleanup: contextlib.ExitStack,
) -> P3Result:
    log(f"P3: starting a private {kind} service")
    mib = size // MiB
    work = work / f"p3-{kind}-{mib}mib"
    await asyncio.to_thread(work.mkdir)
    service: BenchEngine = (
        BenchPodman(work / kind) if kind == "podman" else BenchDocker(work / kind)
    )
    cleanup.callback(service.stop)  # also removes its spool on tmpfs
    await asyncio.to_thread(service.start)
    version = await _engine_version(service)
    fragment = await asyncio.to_thread((upstream.api_dir / KEY_FRAGMENT_FILE).read_bytes)
    plain, encrypted = await build_archives(service, work, size, fragment)

    listed = await archive_artifact(encrypted)
    public = await sign_release(
        upstream, {ARCHIVE_KEY: listed.artifact}, {segments_name(ARCHIVE_KEY): listed.segments}
    )
    loader_tmp = work / "loader-tmpdir"
    await asyncio.to_thread(loader_tmp.mkdir)
    env = {
        "DOCKER_HOST": service.docker_host,
        "EDGELOADER_API_SERVICES": IMAGE_REPO,
        "IMAGES_PATH": str(encrypted),
        "TMPDIR": str(loader_tmp),
    }
    loader, url = await start_loader(upstream, cleanup, f"p3-{kind}-{mib}", **env)
    signed, signed_url = await start_loader(
        upstream, cleanup, f"p3-{kind}-{mib}-signed", EDGELOADER_PUBLISHER_KEY=str(public), **env
    )
    folders = {"loader TMPDIR": loader_tmp, f"{kind} spool": service.tmpdir}
    if isinstance(service, BenchPodman):
        folders["podman image-tmp"] = service.base_dir / "image-tmp"
    api_methods = (API, LIBPOD) if kind == "podman" else (API,)
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        auth = await login(http, url)
        signed_auth = await login(http, signed_url)

        def through(path: str) -> Callable[[], Awaitable[P3Run]]:
            return lambda: api_load(service, plain, folders, path)

        methods: dict[str, Callable[[], Awaitable[P3Run]]] = {
            CLI: lambda: cli_load(service, plain, folders),
            **{api: through(API_PATHS[api]) for api in api_methods},
            UNLOCK: lambda: unlock(http, url, auth, service, loader, folders),
            SIGNED: lambda: unlock(http, signed_url, signed_auth, service, signed, folders),
        }
        results: dict[str, list[P3Run]] = {method: [] for method in methods}
        for i in range(runs + 1):  # the first round warms up
            # Each round starts one method later, so that no method always
            # follows the same other one.
            names = list(methods)
            order = names[i % len(names) :] + names[: i % len(names)]
            which = "warm-up" if i == 0 else f"run {i}/{runs}"
            log(f"P3 on {kind}, {mib} MiB: {which}: {', '.join(order)}")
            for method in order:
                run = await methods[method]()
                if i > 0:
                    results[method].append(run)
    peak_rss = proc_status_bytes(loader.pid, "VmHWM")
    loader.stop()
    signed.stop()
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    plain_bytes = (await asyncio.to_thread(plain.stat)).st_size
    for path in (plain, encrypted):
        await asyncio.to_thread(path.unlink)
    return P3Result(kind, plain_bytes, results, peak_rss, version, api_methods)


async def _engine_version(service: BenchEngine) -> str:
    status, body = await asyncio.to_thread(service.request, "GET", f"{DOCKER_API}/version")
    if status != 200:
        raise BenchError(f"engine version: HTTP {status}")
    version = json.loads(body)
    name = "podman" if service.kind == "podman" else "Docker Engine"
    return f"{name} {version.get('Version', '?')}"
