"""Function runs through the loader against the engine's own CLI (``podman
run --rm``, ``docker run --rm``), measured in the same run on the same
private engine storage, on each engine.

F1  Sync invoke latency: ``POST /api/functions/NAME/invoke`` (request in →
    run record out) of a trivial busybox function, against ``run --rm`` of
    the same image and command with the same isolation flags and a run
    folder mounted the same way. Median and p95 over ``--runs`` runs, the
    two alternating; target: the loader's median at most 1.25 times
    podman's CLI, 1.15 times Docker's.
F2  Throughput: ``--runs`` runs, 2 at a time (the loader's default
    ``EDGELOADER_MAX_RUNS``), against the CLI run 2 at a time.
F3  A warm function's sync invoke (``examples/warm-echo``, built on the box
    through the loader's build route; its container kept between invokes)
    against F1's cold sync invoke through the same API. Target: the warm
    median at most 0.1 times the cold one (aim: 0.02).

    make bench-functions      (or: python -m bench.bench_functions [--runs N] [--engine E])

The bench starts its own engine services (tests/support/podman.py,
tests/support/docker.py), the reference Resource API (for a token) and a
loader per engine (``python -m edgeloader serve``, default auth mode), each
as its own process. The CLI's run folders
are prepared before its clock starts; the loader's preparation is inside
its time. Figures vary between machines and runs; the ratios are what to
compare. Linux only, as root (run folders are given to uid 65534).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tests.support import docker, podman
from tests.support.docker import DockerService
from tests.support.engines import EngineKind, EngineService, import_busybox_image
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import dead_url
from tests.support.harness.processes import clean_env
from tests.support.harness.resource_api import User, start_resource_api_process, write_api_data
from tests.support.podman import PodmanService

from edgeloader.roles import Role

EMAIL, PASSWORD = "bench@example.org", "bench-password-1"
IMAGE = "localhost/edgeloader-bench-fn:1"
FUNCTION = "bench-echo"
SCRIPT = "cat request.json > result.json"
UID = 65534
TARGET_RATIO: dict[EngineKind, float] = {"podman": 1.25, "docker": 1.15}
WARM_FUNCTION = "bench-warm"
WARM_TARGET = 0.1
HANDLER_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "warm-echo" / "handler.c"
WARMUP = 3
MAX_RUN_ROOT = 50  # characters podman accepts in a run root
# The isolation the loader gives every run, as CLI flags both engines take.
CLI_ISOLATION = (
    "--network=none",
    "--read-only",
    "--tmpfs=/tmp:rw,noexec,nosuid,nodev,size=16m,mode=1777",
    "--shm-size=16m",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--pids-limit=64",
    "--memory=128m",
    "--memory-swap=128m",
    "--cpus=0.5",
    f"--user={UID}:{UID}",
    "--workdir=/app/functions",
)
# What podman's CLI adds that the loader leaves out (docs/functions.md).
PODMAN_ONLY = ("--read-only-tmpfs=false", "--passwd=false", "--no-hosts", "--image-volume=ignore")


class BenchError(RuntimeError):
    """Set-up failed or a measured run did not succeed."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Loader:
    http: aiohttp.ClientSession
    url: str
    headers: dict[str, str]
    pid: int

    async def call(self, method: str, path: str, body: object) -> dict[str, object]:
        async with self.http.request(
            method, self.url + path, json=body, headers=self.headers
        ) as resp:
            answer: dict[str, object] = await resp.json()
            if resp.status >= 300:
                raise BenchError(f"{method} {path}: HTTP {resp.status}: {answer}")
            return answer

    async def invoke(self, n: int) -> float:
        started = time.perf_counter()
        run = await self.call("POST", f"/api/functions/{FUNCTION}/invoke", {"n": n})
        took = time.perf_counter() - started
        if run["status"] != "succeeded" or run["result"] != {"n": n}:
            raise BenchError(f"loader run failed: {run}")
        return took

    async def invoke_warm(self, n: int) -> float:
        started = time.perf_counter()
        run = await self.call("POST", f"/api/functions/{WARM_FUNCTION}/invoke", {"n": n})
        took = time.perf_counter() - started
        if run["status"] != "succeeded":
            raise BenchError(f"warm run failed: {run}")
        return took

    async def build_warm(self, handler: bytes) -> None:
        """The warm example, built on the box from the bench's busybox image."""
        buffer = io.BytesIO()
        dockerfile = f"FROM {IMAGE}\nCOPY handler /handler\n".encode()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            files = (("Dockerfile", dockerfile, 0o644), ("handler", handler, 0o755))
            for name, data, mode in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        form = aiohttp.FormData()
        spec = {"command": ["/handler"], "warm": {"max": 1, "idleS": 600}}
        form.add_field("spec", json.dumps(spec), content_type="application/json")
        form.add_field("context", buffer.getvalue(), filename="c.tar")
        path = f"/api/functions/{WARM_FUNCTION}/build"
        async with self.http.post(self.url + path, data=form, headers=self.headers) as resp:
            if resp.status not in (200, 201):
                detail = await resp.text()
                raise BenchError(f"build of the warm example: HTTP {resp.status}: {detail}")


class Cli:
    """``podman run --rm`` or ``docker run --rm`` against the service's
    storage, with run folders."""

    def __init__(self, engine: EngineService, work: Path) -> None:
        self.kind = engine.kind
        self.env = {**os.environ, **engine.env}
        self.program = shutil.which(self.kind) or self.kind
        self.work = work
        self.count = 0

    def folder(self, n: int) -> Path:
        self.count += 1
        folder = self.work / f"cli-{self.kind}-run-{self.count}"
        folder.mkdir(mode=0o700)
        (folder / "request.json").write_text(json.dumps({"n": n}))
        for path in (folder / "request.json", folder):
            os.chown(path, UID, UID)
        return folder

    async def run(self, n: int) -> float:
        folder = await asyncio.to_thread(self.folder, n)
        args = [*CLI_ISOLATION, f"--volume={folder}:/app/functions:rw"]
        if self.kind == "podman":
            args += PODMAN_ONLY
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            self.program,
            "run",
            "--rm",
            *args,
            IMAGE,
            "sh",
            "-c",
            SCRIPT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
        took = time.perf_counter() - started
        result = (folder / "result.json").read_bytes() if process.returncode == 0 else b""
        if process.returncode != 0 or json.loads(result) != {"n": n}:
            raise BenchError(
                f"{self.kind} run exited {process.returncode}: {stderr.decode()[-2000:]}"
            )
        await asyncio.to_thread(shutil.rmtree, folder)
        return took


def percentile(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)
    return ordered[max(rank, 1) - 1]


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(run: Callable[[int], Awaitable[float]], runs: int, width: int) -> float:
    """Runs per second with ``width`` runs at a time."""
    numbers = iter(range(runs))

    async def worker() -> None:
        for n in numbers:
            await run(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return runs / (time.perf_counter() - started)


async def start(work: Path, engine: EngineService, cleanup: contextlib.ExitStack) -> Loader:
    await asyncio.to_thread(work.mkdir)
    logs = work / "logs"
    logs.mkdir()
    env = clean_env(TMPDIR=str(work / "tmp"))
    (work / "tmp").mkdir()
    api_dir = work / "api"
    await asyncio.to_thread(
        write_api_data, api_dir, dead_url(), [User(EMAIL, PASSWORD, Role.ADMIN)]
    )
    _, api_url = await start_resource_api_process(api_dir, env, logs, cleanup)
    child, url = await start_loader_process(
        api_url, work / "loader-state", logs, cleanup, DOCKER_HOST=engine.docker_host
    )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
    async with http.post(
        f"{url}/api/auth/login", json={"email": EMAIL, "password": PASSWORD}
    ) as resp:
        if resp.status != 200:
            raise BenchError(f"login: HTTP {resp.status}: {await resp.text()}")
        token = (await resp.json())["accessToken"]
    loader = Loader(http, url, {"Authorization": f"Bearer {token}"}, child.pid)
    await loader.call(
        "POST",
        "/api/functions",
        {"name": FUNCTION, "image": IMAGE, "command": ["sh", "-c", SCRIPT], "concurrency": 2},
    )
    return loader


@dataclass
class EngineResult:
    name: str  # the engine and its CLI's version
    kind: EngineKind
    loader_times: list[float]
    cli_times: list[float]
    loader_cpu: float  # CPU seconds per run
    loader_rate: float
    cli_rate: float
    warm_times: list[float]
    warm_cpu: float  # the loader's CPU seconds per warm invoke


async def bench_engine(kind: EngineKind, work: Path, runs: int) -> EngineResult:
    service: EngineService = (
        PodmanService(work / kind) if kind == "podman" else DockerService(work / kind)
    )
    with service as engine, contextlib.ExitStack() as cleanup:
        log(f"{kind} service up; importing the busybox image")
        await asyncio.to_thread(import_busybox_image, engine, IMAGE)
        loader = await start(work / f"loader-{kind}", engine, cleanup)
        try:
            cli = Cli(engine, work)
            version = await _cli_version(cli)
            log(f"{kind}: warm-up, {WARMUP} runs each")
            for n in range(WARMUP):
                await loader.invoke(n)
                await cli.run(n)

            log(f"{kind} F1: {runs} sync runs each, alternating")
            loader_times, cli_times = [], []
            cpu_before = cpu_seconds(loader.pid)
            for n in range(runs):
                loader_times.append(await loader.invoke(n))
                cli_times.append(await cli.run(n))
            loader_cpu = (cpu_seconds(loader.pid) - cpu_before) / runs

            log(f"{kind} F2: {runs} runs, 2 at a time, each")
            loader_rate = await throughput(loader.invoke, runs, 2)
            cli_rate = await throughput(cli.run, runs, 2)

            log(f"{kind} F3: building the warm example; {runs} warm invokes")
            await loader.build_warm(await asyncio.to_thread(_handler, work))
            await loader.invoke_warm(-1)  # its cold start
            cpu_before = cpu_seconds(loader.pid)
            warm_times = [await loader.invoke_warm(n) for n in range(runs)]
            warm_cpu = (cpu_seconds(loader.pid) - cpu_before) / runs
        finally:
            await loader.http.close()
    return EngineResult(
        version, kind, loader_times, cli_times, loader_cpu, loader_rate, cli_rate,
        warm_times, warm_cpu,
    )  # fmt: skip


def _handler(work: Path) -> bytes:
    out = work / "handler"
    if not out.exists():
        subprocess.run(
            ["gcc", "-static", "-O2", "-o", str(out), str(HANDLER_SOURCE)], check=True, timeout=120
        )
    return out.read_bytes()


async def _cli_version(cli: Cli) -> str:
    process = await asyncio.create_subprocess_exec(
        cli.program, "--version", env=cli.env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return out.decode().strip()


def report(result: EngineResult, runs: int) -> None:
    loader_times, cli_times = result.loader_times, result.cli_times
    ratio = statistics.median(loader_times) / statistics.median(cli_times)
    target = TARGET_RATIO[result.kind]
    print()
    print(f"{result.kind}: CLI {result.name}")
    print(f"F1  sync invoke latency, {runs} runs (ms)     median     p95")
    for label, times in (
        ("loader  POST /invoke → record", loader_times),
        (f"{result.kind} run --rm (CLI)", cli_times),
    ):
        median, p95 = statistics.median(times) * 1000, percentile(times, 95) * 1000
        print(f"    {label:<36} {median:7.0f} {p95:7.0f}")
    verdict = "met" if ratio <= target else "missed"
    print(f"    ratio of medians: {ratio:.2f}x (target <= {target}x: {verdict})")
    print(f"    loader CPU per run: {result.loader_cpu * 1000:.0f} ms")
    print(f"F2  throughput, {runs} runs 2 at a time (runs/s)")
    print(
        f"    loader {result.loader_rate:.2f}   CLI {result.cli_rate:.2f}"
        f"   ratio {result.loader_rate / result.cli_rate:.2f}x"
    )
    warm, cold = statistics.median(result.warm_times), statistics.median(loader_times)
    print(f"F3  warm sync invoke, {runs} runs (ms)         median     p95")
    print(
        f"    {'loader, warm container':<36} {warm * 1000:7.1f}"
        f" {percentile(result.warm_times, 95) * 1000:7.1f}"
    )
    verdict = "met" if warm / cold <= WARM_TARGET else "missed"
    print(f"    warm vs cold (F1): {warm / cold:.3f}x (target <= {WARM_TARGET}x: {verdict})")
    print(f"    loader CPU per warm invoke: {result.warm_cpu * 1000:.1f} ms")


async def bench(work: Path, runs: int, kinds: tuple[EngineKind, ...]) -> None:
    results = [await bench_engine(kind, work, runs) for kind in kinds]
    for result in results:
        report(result, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per measurement (30)")
    parser.add_argument("--work-dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--engine",
        choices=("podman", "docker", "both"),
        default="both",
        help="the engines to measure (default: both)",
    )
    args = parser.parse_args()
    kinds: tuple[EngineKind, ...] = (
        ("podman", "docker") if args.engine == "both" else (args.engine,)
    )
    if ("podman" in kinds and not podman.available()) or (
        "docker" in kinds and not docker.available()
    ):
        print("bench_functions: the engines are not installed (make engine)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_functions: run as root (run folders go to uid 65534)", file=sys.stderr)
        return 2
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="bench-fn-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if "podman" in kinds and len(str(work / "podman" / "run")) > MAX_RUN_ROOT:
        # Podman's clean-up after each container refuses it, and every run
        # would then wait for podman's 20-second fallback.
        print(f"bench_functions: {work} is too long a path for podman", file=sys.stderr)
        return 2
    try:
        asyncio.run(bench(work, args.runs, kinds))
    except BenchError as exc:
        print(f"bench_functions: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
