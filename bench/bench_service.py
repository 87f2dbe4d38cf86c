"""Service benchmarks, each against a raw baseline measured in the same run.

P2  POST /load through the loader against a raw S3 GET (aiobotocore) of the
    same big part from the same moto server.
P3  POST /unlock of an encrypted docker-archive into podman against
    `podman load -i` of the plain archive into the same storage.

    make bench-service        (or: python bench/bench_service.py --quick)

moto's S3 server (ThreadedMotoServer), the reference Resource API and the
loader (`python -m edgeloader serve`) each run as their own process on
loopback: the loader's peak RSS is its VmHWM, and no client shares a GIL with
a server. A fresh loader process, in the default auth mode (bearer tokens) and
without a model cache, is started per P2 size and for P3. Figures
vary between machines and runs; the ratios are what to compare. MB is 10^6
bytes, MiB 2^20. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from tests.support.podman import (
    BUSYBOX,
    PodmanService,
    available,
    image_exists,
    remove_image,
    save_images,
)

from edgeloader import crypto
from edgeloader.config import CdnOverrides
from edgeloader.services.session import fetch_cdn_config
from edgeloader.services.upload import upload_resource
from edgeloader.storage.files import read_file_chunks
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader_publisher.archive import encrypt_archive
from edgeloader_publisher.resource import PUBLISHER_HARDWARE
from edgeloader_publisher.resource_api.server import KEY_FRAGMENT_FILE, USERS_FILE
from edgeloader_publisher.resource_api.users import UserStore

MiB = 1 << 20
CHUNK = MiB
EMAIL, PASSWORD = "bench@example.org", "bench-password-1"
FOLDER = "bench"
S3_KEY, S3_SECRET = "bench", "bench-secret"
IMAGE_REPO = "localhost/edgeloader-bench"
IMAGE_REF = f"{IMAGE_REPO}:latest"
LIBPOD_API = "/v4.0.0/libpod"
DOCKER_API = "/v1.41"  # what the loader's client (aiodocker) negotiates with podman 4
POLL_SECONDS = 0.05  # /unlock/status
SAMPLE_SECONDS = 0.02  # temp folders and RSS
P2_TARGET_RATIO, P3_TARGET_RATIO, RSS_TARGET_MB = 0.80, 1.15, 150
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=300)
# Variables the loader reads; the bench sets them itself.
LOADER_VARS = ("RESOURCE_API_URL", "IMAGES_PATH", "API_VERSION", "DOCKER_HOST", "TMPDIR")

# ThreadedMotoServer on port 0, in a process of its own; the port goes to argv[1].
MOTO_SCRIPT = """
import os, sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
with open(sys.argv[1] + ".part", "w") as f:
    f.write(str(server.get_host_and_port()[1]))
os.replace(sys.argv[1] + ".part", sys.argv[1])
threading.Event().wait()
"""


class BenchError(RuntimeError):
    """Set-up failed or a measured operation did not succeed."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------


@dataclass
class Child:
    """A Python subprocess in its own session (Ctrl-C reaches only the bench)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


def spawn(
    name: str, args: list[str], env: dict[str, str], logs: Path, cleanup: contextlib.ExitStack
) -> Child:
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name, process, log_path)
    cleanup.callback(child.stop)
    return child


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every loader setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EDGELOADER_") and k not in LOADER_VARS
    }
    return env | extra


async def wait_http(child: Child, url: str, within: float = 60.0) -> None:
    """Until ``url`` answers at all (any status)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            child.check_alive()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(url):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} did not answer {url} within {within:g}s")
            await asyncio.sleep(0.05)


def proc_status_bytes(pid: int, key: str) -> int:
    """``VmRSS``, ``VmHWM``... of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all the process's threads."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class Watcher:
    """Samples, every 20 ms in a thread, the bytes under some folders and the
    RSS of one process; keeps the maxima."""

    def __init__(self, folders: dict[str, Path], pid: int | None = None) -> None:
        self.folders = folders
        self.pid = pid
        self.peak_bytes = dict.fromkeys(folders, 0)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for name, folder in self.folders.items():
                self.peak_bytes[name] = max(self.peak_bytes[name], tree_bytes(folder))
            if self.pid is not None:
                with contextlib.suppress(OSError, BenchError):
                    self.peak_rss = max(self.peak_rss, proc_status_bytes(self.pid, "VmRSS"))
            if self._stop.wait(SAMPLE_SECONDS):
                return


def tree_bytes(root: Path) -> int:
    """Apparent size of the regular files under ``root``; 0 if it is gone."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


# -- the upstream: moto and the Resource API -----------------------------------


@dataclass
class Upstream:
    s3_url: str
    api_url: str
    api_dir: Path
    moto: Child
    logs: Path


def write_api_data(api_dir: Path, s3_url: str) -> None:
    api_dir.mkdir(parents=True)
    with UserStore(api_dir / USERS_FILE) as users:
        users.add_user(EMAIL, PASSWORD, role="Admin")
    keys = ("downloader_access_key", "uploader_access_key")
    secrets = ("downloader_access_secret", "uploader_access_secret")
    (api_dir / "cdn.yaml").write_text(
        f"host: {s3_url}\n"
        + "".join(f"{k}: {S3_KEY}\n" for k in keys)
        + "".join(f"{k}: {S3_SECRET}\n" for k in secrets)
    )


def wait_for_file(path: Path, child: Child, within: float = 60.0) -> str:
    deadline = time.monotonic() + within
    while not path.exists():
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not start within {within:g}s")
        time.sleep(0.05)
    return path.read_text()


@contextlib.asynccontextmanager
async def s3_client(url: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        config=Config(read_timeout=300, s3={"addressing_style": "path"}),
    ) as s3:
        yield s3


async def start_upstream(work: Path, cleanup: contextlib.ExitStack) -> Upstream:
    logs, tmp = work / "logs", work / "tmp"
    # moto spools big objects to temp files: keep them in the work folder.
    env = clean_env(TMPDIR=str(tmp))
    port_file = work / "moto.port"
    moto = spawn("moto", ["-c", MOTO_SCRIPT, str(port_file)], env, logs, cleanup)
    s3_url = f"http://127.0.0.1:{await asyncio.to_thread(wait_for_file, port_file, moto)}"
    await wait_http(moto, s3_url)
    async with s3_client(s3_url) as s3:
        await s3.create_bucket(Bucket=FOLDER)

    api_dir = work / "api"
    await asyncio.to_thread(write_api_data, api_dir, s3_url)
    port = free_port()
    args = ["-m", "edgeloader", "resource-api", "--port", str(port), "--data-dir", str(api_dir)]
    api = spawn("resource-api", args, env, logs, cleanup)
    api_url = f"http://127.0.0.1:{port}"
    await wait_http(api, f"{api_url}/resources/list/{FOLDER}")
    return Upstream(s3_url, api_url, api_dir, moto, logs)


async def loader_login(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """POST /login (the device logs in upstream); the caller's bearer header."""
    async with http.post(f"{url}/login", json={"email": EMAIL, "password": PASSWORD}) as resp:
        if resp.status != 200:
            raise BenchError(f"loader /login: HTTP {resp.status}: {await resp.text()}")
        answer = await resp.json()
    token = answer.get("accessToken")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def start_loader(
    upstream: Upstream, cleanup: contextlib.ExitStack, **env: str
) -> tuple[Child, str]:
    """``python -m edgeloader serve`` without a model cache, in the default
    auth mode (agents need a bearer token), with a fresh state folder."""
    port = free_port()
    args = ["-m", "edgeloader", "serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "WARNING"]
    state = upstream.logs.parent / f"loader-state-{port}"
    full_env = clean_env(RESOURCE_API_URL=upstream.api_url, EDGELOADER_STATE_DIR=str(state), **env)
    child = spawn(f"loader-{port}", args, full_env, upstream.logs, cleanup)
    url = f"http://127.0.0.1:{port}"
    await wait_http(child, f"{url}/health")
    return child, url


# -- P2: /load against a raw S3 GET -------------------------------------------


class Clock:
    """Wall time and the CPU time of some processes, from start to the first
    byte (response headers) and to the end."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu_start = self._cpu()
        self.start = time.perf_counter()
        self.first_byte = 0.0
        self.cpu_first_byte = self.cpu_start

    def _cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def mark_first_byte(self) -> None:
        self.first_byte = time.perf_counter() - self.start
        self.cpu_first_byte = self._cpu()

    def stop(self, nbytes: int) -> Transfer:
        seconds = time.perf_counter() - self.start
        cpu = self._cpu()
        head = {n: self.cpu_first_byte[n] - self.cpu_start[n] for n in self.pids}
        body = {n: cpu[n] - self.cpu_first_byte[n] for n in self.pids}
        return Transfer(seconds, nbytes, self.first_byte, head, body)


@dataclass
class Transfer:
    seconds: float
    nbytes: int
    first_byte: float  # seconds to the response headers
    cpu_head: dict[str, float]  # CPU seconds per process before the first byte
    cpu_body: dict[str, float]  # ... and after it

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def body_mbps(self) -> float:
        return self.nbytes / (self.seconds - self.first_byte) / 1e6

    def head_cpu(self, name: str) -> str:
        return _percent(self.cpu_head, name, self.first_byte)

    def body_cpu(self, name: str) -> str:
        return _percent(self.cpu_body, name, self.seconds - self.first_byte)


def _percent(cpu: dict[str, float], name: str, seconds: float) -> str:
    return f"{100 * cpu[name] / seconds:.0f}%" if name in cpu else "-"


@dataclass
class P2Result:
    size: int
    loader: list[Transfer]
    raw: list[Transfer]
    tail: list[float]  # seconds for a ranged GET of the big part's last 32 bytes
    idle_rss: int
    peak_rss: int


def median_run(runs: list[Transfer]) -> Transfer:
    return sorted(runs, key=lambda t: t.mbps)[len(runs) // 2]


async def publish(upstream: Upstream, name: str, size: int) -> None:
    """Publishes ``size`` bytes through the loader's own upload pipeline
    (encrypt, split, multipart upload of the big part), one chunk in memory.
    The plaintext repeats one random MiB; the ciphertext does not repeat."""
    block = os.urandom(CHUNK)

    async def plaintext() -> AsyncIterator[bytes]:
        for offset in range(0, size, CHUNK):
            yield block[: min(CHUNK, size - offset)]

    async with aiohttp.ClientSession() as http:
        api = ResourceApiClient(upstream.api_url, http, timeout=120)
        await api.login(EMAIL, PASSWORD)
        key = crypto.api_key(EMAIL, PASSWORD, PUBLISHER_HARDWARE)
        config = await fetch_cdn_config(api, key, PUBLISHER_HARDWARE, CdnOverrides())
        async with Cdn(config) as cdn:
            staged = await upload_resource(cdn, api, FOLDER, name, plaintext(), part_size=64 * MiB)
    if staged.plaintext_bytes != size:
        raise BenchError(f"published {staged.plaintext_bytes} bytes of {name}, not {size}")


async def via_loader(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], name: str, clock: Clock
) -> Transfer:
    """The loader's /load, read in 1 MiB pieces and dropped."""
    body = {"folder": FOLDER}
    async with http.post(f"{url}/load/{name}", json=body, headers=auth) as resp:
        clock.mark_first_byte()
        if resp.status != 200:
            raise BenchError(f"/load/{name}: HTTP {resp.status}: {await resp.text()}")
        expected, done = resp.content_length, 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            done += len(chunk)
    if done != expected:
        raise BenchError(f"/load/{name}: {done} bytes of {expected}")
    return clock.stop(done)


async def via_s3(s3: Any, name: str, clock: Clock) -> Transfer:
    """A raw GET of the big part, read with iter_chunks(1 MiB) and dropped."""
    resp = await s3.get_object(Bucket=FOLDER, Key=f"{name}.big")
    clock.mark_first_byte()
    expected, done = int(resp["ContentLength"]), 0
    async with resp["Body"] as body:
        async for chunk in body.iter_chunks(CHUNK):
            done += len(chunk)
    if done != expected:
        raise BenchError(f"GET {name}.big: {done} bytes of {expected}")
    return clock.stop(done)


async def tail_get(s3: Any, name: str) -> float:
    """Seconds for the ranged GET the loader makes to learn the plaintext length."""
    start = time.perf_counter()
    resp = await s3.get_object(Bucket=FOLDER, Key=f"{name}.big", Range="bytes=-32")
    async with resp["Body"] as body:
        await body.read()
    return time.perf_counter() - start


async def bench_p2(
    upstream: Upstream, sizes: list[int], runs: int, cleanup: contextlib.ExitStack
) -> list[P2Result]:
    results = []
    for size in sizes:
        name = f"p2-{size // MiB}mib.bin"
        log(f"P2: publishing {size // MiB} MiB as {FOLDER}/{name}")
        await publish(upstream, name, size)
        loader, url = await start_loader(upstream, cleanup)
        me, moto = os.getpid(), upstream.moto.pid
        idle_rss = proc_status_bytes(loader.pid, "VmRSS")
        result = P2Result(size, [], [], [], idle_rss, 0)
        async with (
            aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
            s3_client(upstream.s3_url) as s3,
        ):
            auth = await loader_login(http, url)
            for i in range(runs + 1):  # the first round warms up
                log(f"P2: {size // MiB} MiB, {'warm-up' if i == 0 else f'run {i}/{runs}'}")
                raw = await via_s3(s3, name, Clock({"moto": moto, "client": me}))
                pids = {"moto": moto, "loader": loader.pid, "client": me}
                ours = await via_loader(http, url, auth, name, Clock(pids))
                tail = await tail_get(s3, name)
                if i > 0:
                    result.raw.append(raw)
                    result.loader.append(ours)
                    result.tail.append(tail)
        result.peak_rss = proc_status_bytes(loader.pid, "VmHWM")
        loader.stop()
        results.append(result)
    return results


def print_p2(results: list[P2Result], runs: int) -> None:
    print()
    print("P2  POST /load through the loader vs a raw S3 GET of the same big part")
    print(f"    same moto server; median of {runs} runs after 1 warm-up; raw and loader alternate")
    print(
        f"{'size':>9} {'loader MB/s':>12} {'raw MB/s':>9} {'ratio':>6}  {'(>=0.80)':<8}"
        f" {'loader peak RSS':>15}  {'(<=150 MB)':<10} {'idle RSS':>9}"
    )
    for r in results:
        loader, raw = median_run(r.loader), median_run(r.raw)
        ratio = loader.mbps / raw.mbps
        peak_mb = r.peak_rss / 1e6
        print(
            f"{_mib(r.size):>9} {loader.mbps:>12.0f} {raw.mbps:>9.0f} {ratio:>6.2f}  "
            f"{_verdict(ratio >= P2_TARGET_RATIO):<8} {peak_mb:>12.0f} MB  "
            f"{_verdict(peak_mb <= RSS_TARGET_MB):<10} {r.idle_rss / 1e6:>6.0f} MB"
        )
    print()
    print("    all runs, MB/s (loader | raw):")
    for r in results:
        loader_all = " ".join(f"{t.mbps:.0f}" for t in r.loader)
        raw_all = " ".join(f"{t.mbps:.0f}" for t in r.raw)
        print(f"{_mib(r.size):>9}  {loader_all} | {raw_all}")
    print()
    print("    where the time goes (median runs): before the first byte, then the body;")
    print("    CPU in % of one core over each phase (2 cores = 200%)")
    print(
        f"{'size':>9} {'path':<7} {'1st byte s':>10} {'moto':>5} {'loader':>7}"
        f" {'body s':>7} {'body MB/s':>9} {'moto':>5} {'loader':>7} {'client':>7}"
    )
    for r in results:
        for path, t in (("raw", median_run(r.raw)), ("loader", median_run(r.loader))):
            print(
                f"{_mib(r.size):>9} {path:<7} {t.first_byte:>10.2f} {t.head_cpu('moto'):>5}"
                f" {t.head_cpu('loader'):>7} {t.seconds - t.first_byte:>7.2f}"
                f" {t.body_mbps:>9.0f} {t.body_cpu('moto'):>5} {t.body_cpu('loader'):>7}"
                f" {t.body_cpu('client'):>7}"
            )
    for r in results:
        print(
            f"    {_mib(r.size)}: the 32-byte ranged GET the loader adds (plaintext length) "
            f"takes {sorted(r.tail)[len(r.tail) // 2]:.2f} s alone on this moto"
        )


# -- P3: /unlock against podman load -------------------------------------------


class BenchPodman(PodmanService):
    """A PodmanService whose processes (service and CLI) use their own TMPDIR,
    so the bytes the engine buffers there can be watched."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.tmpdir = self.base_dir / "tmpdir"
        self.tmpdir.mkdir(parents=True)

    @property
    def env(self) -> dict[str, str]:
        return super().env | {"TMPDIR": str(self.tmpdir)}

    @property
    def image_tmp(self) -> Path:
        return self.base_dir / "image-tmp"  # image_copy_tmp_dir in containers.conf


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


async def import_rootfs(service: PodmanService, rootfs: Path) -> None:
    """libpod's image import, the body streamed from the file."""
    query = urlencode([("reference", IMAGE_REF), ("changes", 'CMD ["/bin/sh"]')])
    connector = aiohttp.UnixConnector(path=str(service.socket_path))
    body = await asyncio.to_thread(open, rootfs, "rb")
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as http,
            http.post(
                f"http://podman{LIBPOD_API}/images/import?{query}",
                data=body,
                headers={"Content-Type": "application/x-tar"},
            ) as resp,
        ):
            text = await resp.text()
            if resp.status != 200:
                raise BenchError(f"image import: HTTP {resp.status}: {text[-2000:]}")
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


@dataclass
class P3Run:
    seconds: float
    temp_bytes: dict[str, int]
    phases: dict[str, float] = field(default_factory=dict)  # first time each state was seen
    rss: int = 0


async def podman_load(service: BenchPodman, plain: Path, folders: dict[str, Path]) -> P3Run:
    """The baseline: ``podman load -i`` (the CLI, same storage)."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    with Watcher(folders) as watch:
        start = time.perf_counter()
        await asyncio.to_thread(service.run_podman, "load", "-i", str(plain), timeout=1800)
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes)


async def api_load(service: BenchPodman, plain: Path, folders: dict[str, Path]) -> P3Run:
    """The plain archive through the engine's HTTP image load, the endpoint
    the loader's client uses, streamed chunked in 1 MiB pieces like the loader
    does: the engine's own cost of the API path, without any decryption."""
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    phases: dict[str, float] = {}
    start = 0.0

    async def body() -> AsyncIterator[bytes]:
        async for chunk in read_file_chunks(plain, CHUNK):
            yield chunk
        phases["loading_images"] = time.perf_counter() - start

    connector = aiohttp.UnixConnector(path=str(service.socket_path))
    with Watcher(folders) as watch:
        start = time.perf_counter()
        async with (
            aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as http,
            http.post(
                f"http://podman{DOCKER_API}/images/load",
                data=body(),
                headers={"Content-Type": "application/x-tar"},
            ) as resp,
        ):
            text = await resp.text()
            if resp.status != 200:
                raise BenchError(f"image load: HTTP {resp.status}: {text[-2000:]}")
        seconds = time.perf_counter() - start
    await _check_loaded(service)
    return P3Run(seconds, watch.peak_bytes, phases)


async def _check_loaded(service: PodmanService) -> None:
    if not await asyncio.to_thread(image_exists, service, IMAGE_REF):
        raise BenchError(f"the load did not create {IMAGE_REF}")


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


@dataclass
class P3Result:
    plain_bytes: int
    runs: dict[str, list[P3Run]]  # per method, in METHODS order
    peak_rss: int
    podman_version: str


CLI, API, UNLOCK = "podman load -i (CLI)", "POST /images/load", "loader /unlock"


async def bench_p3(
    upstream: Upstream, size: int, runs: int, work: Path, cleanup: contextlib.ExitStack
) -> P3Result:
    log("P3: starting a private podman service")
    service = BenchPodman(work / "podman")
    await asyncio.to_thread(service.start)
    cleanup.callback(service.stop)
    version = (await asyncio.to_thread(service.run_podman, "--version")).stdout.decode().strip()
    fragment = await asyncio.to_thread((upstream.api_dir / KEY_FRAGMENT_FILE).read_bytes)
    plain, encrypted = await build_archives(service, work, size, fragment)

    loader_tmp = work / "loader-tmpdir"
    await asyncio.to_thread(loader_tmp.mkdir)
    loader, url = await start_loader(
        upstream,
        cleanup,
        DOCKER_HOST=service.docker_host,
        EDGELOADER_API_SERVICES=IMAGE_REPO,
        IMAGES_PATH=str(encrypted),
        TMPDIR=str(loader_tmp),
    )
    folders = {
        "loader TMPDIR": loader_tmp,
        "podman TMPDIR": service.tmpdir,
        "podman image-tmp": service.image_tmp,
    }
    results: dict[str, list[P3Run]] = {CLI: [], API: [], UNLOCK: []}
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        auth = await loader_login(http, url)
        for i in range(runs + 1):  # the first round warms up
            log(f"P3: {'warm-up' if i == 0 else f'run {i}/{runs}'}: CLI, API, /unlock")
            round_ = {
                CLI: await podman_load(service, plain, folders),
                API: await api_load(service, plain, folders),
                UNLOCK: await unlock(http, url, auth, service, loader, folders),
            }
            if i > 0:
                for method, run in round_.items():
                    results[method].append(run)
    peak_rss = proc_status_bytes(loader.pid, "VmHWM")
    loader.stop()
    await asyncio.to_thread(remove_image, service, IMAGE_REF)
    plain_bytes = (await asyncio.to_thread(plain.stat)).st_size
    return P3Result(plain_bytes, results, peak_rss, version)


def print_p3(result: P3Result, runs: int) -> None:
    def median(items: list[P3Run]) -> P3Run:
        return sorted(items, key=lambda r: r.seconds)[len(items) // 2]

    medians = {method: median(items) for method, items in result.runs.items()}
    cli, api, ours = medians[CLI], medians[API], medians[UNLOCK]
    names = list(ours.temp_bytes)
    print()
    print("P3  POST /unlock (decrypt + stream into the engine) vs `podman load -i` (plain)")
    print(f"    one {result.plain_bytes / 1e9:.2f} GB docker-archive; {result.podman_version}, vfs")
    print(f"    median of {runs} runs after 1 warm-up; the three methods alternate")
    print("    temp = most bytes seen at once (sampled every 20 ms) in each folder")
    header = "".join(f" {n:>16}" for n in names)
    print(f"{'method':<21} {'wall s':>6} {'vs CLI':>6}  {'(<=1.15)':<8}{header}")
    for method, run in medians.items():
        ratio = run.seconds / cli.seconds
        verdict = _verdict(ratio <= P3_TARGET_RATIO) if method == UNLOCK else ""
        temps = "".join(f" {_bytes(run.temp_bytes[n]):>16}" for n in names)
        print(f"{method:<21} {run.seconds:>6.2f} {ratio:>5.2f}x  {verdict:<8}{temps}")
    print()
    for method, items in result.runs.items():
        print(f"    all runs, s, {method}: " + " ".join(f"{r.seconds:.2f}" for r in items))
    print(f"    loader /unlock vs the plain API load: {ours.seconds / api.seconds:.2f}x")
    for method, run in ((API, api), (UNLOCK, ours)):
        sent = run.phases.get("loading_images")
        started = run.phases.get("decrypting", 0.0)
        if sent is not None:
            print(
                f"    {method}, median run: body sent {sent - started:.2f} s after "
                f"{started:.2f} s of set-up, then the engine {run.seconds - sent:.2f} s"
            )
    sampled = max(r.rss for r in result.runs[UNLOCK])
    print(
        f"    loader peak RSS: {result.peak_rss / 1e6:.0f} MB (VmHWM over the process's life); "
        f"most sampled during an unlock: {sampled / 1e6:.0f} MB"
    )


# -- main ------------------------------------------------------------------------


def _mib(size: int) -> str:
    return f"{size / MiB:g} MiB"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1_000_000 else f"{n} B"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def check_space(work_dir: Path, p2_sizes: list[int], p3_size: int | None) -> None:
    # moto keeps the parts and the object; P3 has the rootfs, the plain and
    # encrypted archives, the image in storage and the engine's temp copies.
    need = 3 * sum(p2_sizes) + (6 * p3_size if p3_size else 0) + 512 * MiB
    free = shutil.disk_usage(work_dir).free
    if free < need:
        raise BenchError(f"{work_dir}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed")


async def bench(args: argparse.Namespace) -> None:
    p2_sizes = [] if args.only == "p3" else [s * MiB for s in args.p2_sizes]
    p3_size = None if args.only == "p2" else args.p3_size * MiB
    if p3_size is not None and not available():
        raise BenchError("P3 needs podman, runc and busybox-static: run `make engine`")
    check_space(args.work_dir, p2_sizes, p3_size)
    work = Path(tempfile.mkdtemp(prefix="edgeloader-bench-", dir=args.work_dir))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        for sub in ("logs", "tmp"):
            (work / sub).mkdir()
        log(f"work folder {work}")
        upstream = await start_upstream(work, cleanup)
        p2 = await bench_p2(upstream, p2_sizes, args.runs, cleanup) if p2_sizes else []
        p3 = await bench_p3(upstream, p3_size, args.runs, work, cleanup) if p3_size else None
    print(f"edgeloader service benchmarks; {os.cpu_count()} cores; {_moto_version()}")
    print("loader: `python -m edgeloader serve`, default auth (bearer token), no model cache")
    if p2:
        print_p2(p2, args.runs)
    if p3 is not None:
        print_p3(p3, args.runs)


def _moto_version() -> str:
    from importlib.metadata import version

    return f"moto {version('moto')}"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MiB like 256,1024, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive MiB")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--p2-sizes",
        type=_sizes,
        default=[256, 1024],
        metavar="MiB,...",
        help="resource sizes for P2 (default: 256,1024)",
    )
    parser.add_argument(
        "--p3-size", type=int, default=1024, metavar="MiB", help="payload for P3 (default: 1024)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB everywhere (overrides the sizes)"
    )
    parser.add_argument("--only", choices=("p2", "p3"), help="run one benchmark only")
    parser.add_argument(
        "--runs", type=int, default=3, help="measured runs per case, after 1 warm-up (default: 3)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        metavar="DIR",
        help="where to put the temporary data, deleted at the end (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.p2_sizes, args.p3_size = [64], 64
    if args.runs < 1 or args.p3_size < 1:
        parser.error("--runs and --p3-size must be positive")
    return args


def main() -> int:
    args = parse_args()
    # The bench's own publishing client would log a warning about JWT checks.
    logging.getLogger("edgeloader").setLevel(logging.ERROR)
    try:
        asyncio.run(bench(args))
    except KeyboardInterrupt:
        print("interrupted; processes stopped and temporary data removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_service: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
