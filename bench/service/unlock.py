"""P3: POST /unlock of an encrypted docker-archive into podman against
`podman load -i` of the plain archive, and against the plain archive sent to
each of the engine's HTTP image loads (the Docker-compatible one and podman's
native one).

The engine's processes (service and CLI) get a ``TMPDIR`` on tmpfs, as
docs/deployment.md tells: podman's API spools every upload there before it
loads it, and its load unpacks the archive there once more."""

from __future__ import annotations

import asyncio
import contextlib
import io
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
from tests.support.harness.processes import Child
from tests.support.podman import BUSYBOX, PodmanService, image_exists, remove_image, save_images

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
CLI, UNLOCK = "podman load -i (CLI)", "loader /unlock"
SIGNED = "loader /unlock, signed"  # under a release: every segment verified as it streams
API, LIBPOD = "compat /images/load", "libpod /images/load"  # the engine's two HTTP loads
API_PATHS = {API: f"{DOCKER_API}/images/load", LIBPOD: f"{LIBPOD_API}/images/load"}
ENGINE_TMPFS = Path("/dev/shm")  # where the engine's TMPDIR goes, as documented


class BenchPodman(PodmanService):
    """A PodmanService whose processes (service and CLI) use their own TMPDIR
    on tmpfs, so the bytes the engine buffers there can be watched."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        if not ENGINE_TMPFS.is_dir():
            raise BenchError(f"P3 puts the engine's TMPDIR on tmpfs: {ENGINE_TMPFS} is missing")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="edgeloader-bench-engine-", dir=ENGINE_TMPFS))

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        return super().env | {"TMPDIR": str(self.tmpdir)}

    @property
    def image_tmp(self) -> Path:
        return self.base_dir / "image-tmp"  # image_copy_tmp_dir in containers.conf


@dataclass
class P3Run:
    seconds: float
    temp_bytes: dict[str, int]
    phases: dict[str, float] = field(default_factory=dict)  # first time each state was seen
    rss: int = 0


@dataclass
class P3Result:
    plain_bytes: int
    runs: dict[str, list[P3Run]]  # per method: CLI, API, LIBPOD, UNLOCK
    peak_rss: int
    podman_version: str
    api_methods: tuple[str, ...] = (API, LIBPOD)  # the engine's HTTP loads
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


async def post_tar(service: PodmanService, path: str, body: Any, what: str) -> None:
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


async def import_rootfs(service: PodmanService, rootfs: Path) -> None:
    """libpod's image import, the body streamed from the file."""
    query = urlencode([("reference", IMAGE_REF), ("changes", 'CMD ["/bin/sh"]')])
    body = await asyncio.to_thread(open, rootfs, "rb")
    try:
        await post_tar(service, f"{LIBPOD_API}/images/import?{query}", body, "image import")
    finally:
        body.close()


async def build_archives(
    service: BenchPodman, work: Path, size: int, fragment: bytes
) -> tuple[Path, Path]:
    """``images.tar`` (docker save of one ~``size`` image) and its ``images.enc``."""
    rootfs, plain, encrypted = work / "rootfs.tar", work / "images.tar", work / "images.enc"
    log(f"P3: writing a rootfs with {size // MiB} MiB of random data")
    await asyncio.to_thread(write_rootfs, rootfs, size)
    log("P3: importing it into podman")
    await import_rootfs(service, rootfs)
    await asyncio.to_thread(rootfs.unlink)
    log("P3: saving the image as a docker-archive")
    await asyncio.to_thread(save_images, service, [IMAGE_REF], plain)
    log("P3: encrypting the archive")
    await encrypt_archive(plain, encrypted, fragment)
    return plain, encrypted


# -- the four methods -------------------------------------------------------------


async def podman_load(service: BenchPodman, plain: Path, folders: dict[str, Path]) -> P3Run:
    """The baseline: ``podman load -i`` (the CLI, same storage)."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    with Watcher(folders) as watch:
        start = time.perf_counter()
        await asyncio.to_thread(service.run_podman, "load", "-i", str(plain), timeout=1800)
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes)


async def api_load(service: BenchPodman, plain: Path, folders: dict[str, Path], path: str) -> P3Run:
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
    service: BenchPodman,
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


async def _check_loaded(service: PodmanService) -> None:
    if not await asyncio.to_thread(image_exists, service, IMAGE_REF):
        raise BenchError(f"the load did not create {IMAGE_REF}")


async def bench_p3(
    upstream: Upstream, size: int, runs: int, work: Path, cleanup: contextlib.ExitStack
) -> P3Result:
    log("P3: starting a private podman service")
    service = BenchPodman(work / "podman")
    cleanup.callback(service.stop)  # also removes its TMPDIR on tmpfs
    await asyncio.to_thread(service.start)
    version = (await asyncio.to_thread(service.run_podman, "--version")).stdout.decode().strip()
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
    loader, url = await start_loader(upstream, cleanup, "p3", **env)
    signed, signed_url = await start_loader(
        upstream, cleanup, "p3-signed", EDGELOADER_PUBLISHER_KEY=str(public), **env
    )
    folders = {
        "loader TMPDIR": loader_tmp,
        "podman TMPDIR": service.tmpdir,
        "podman image-tmp": service.image_tmp,
    }
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        auth = await login(http, url)
        signed_auth = await login(http, signed_url)
        methods: dict[str, Callable[[], Awaitable[P3Run]]] = {
            CLI: lambda: podman_load(service, plain, folders),
            API: lambda: api_load(service, plain, folders, API_PATHS[API]),
            LIBPOD: lambda: api_load(service, plain, folders, API_PATHS[LIBPOD]),
            UNLOCK: lambda: unlock(http, url, auth, service, loader, folders),
            SIGNED: lambda: unlock(http, signed_url, signed_auth, service, signed, folders),
        }
        results: dict[str, list[P3Run]] = {method: [] for method in methods}
        for i in range(runs + 1):  # the first round warms up
            # Each round starts one method later, so that no method always
            # follows the same other one.
            names = list(methods)
            order = names[i % len(names) :] + names[: i % len(names)]
            log(f"P3: {'warm-up' if i == 0 else f'run {i}/{runs}'}: {', '.join(order)}")
            for method in order:
                run = await methods[method]()
                if i > 0:
                    results[method].append(run)
    peak_rss = proc_status_bytes(loader.pid, "VmHWM")
    loader.stop()
    signed.stop()
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    plain_bytes = (await asyncio.to_thread(plain.stat)).st_size
    return P3Result(plain_bytes, results, peak_rss, version)
