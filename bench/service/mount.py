"""P5: a function's first invoke that mounts a model, against ``POST
/load`` of the same model, from the same state: the model pre-staged in
the loader's cache (so the CDN is not in either path), the model store
empty. The load's client reads and hashes every byte (to check it); the
function reads every byte of its mount (``cat > /dev/null``; the tests
check what it reads); the invoke also pays for its container. Then a
second invoke of the same model: its mount costs no decryption (the store
holds it), so first - second is what mounting the model cost.

Each round restarts the loader (same state and cache, an empty store) and
runs a function without models first, so that the loader's one-time
checks (the engine, the mount probe) fall on neither side.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tests.support.engines import import_busybox_image

from bench.service import NO_TIMEOUT, MiB, log
from bench.service.load import publish, via_loader
from bench.service.measure import Clock
from bench.service.stack import FOLDER, Upstream, login, start_loader
from bench.service.unlock import BenchPodman

IMAGE = "localhost/edgeloader-bench-model:1"
TARGET = 1.2


@dataclass
class MountResult:
    server: str
    size: int
    load: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)


async def bench_mount(
    upstream: Upstream,
    server: str,
    size: int,
    runs: int,
    work: Path,
    cleanup: contextlib.ExitStack,
) -> MountResult:
    mib = size // MiB
    res = await publish(upstream, server, f"p5-{server}-{mib}mib.bin", size, fmt=2)
    engine = cleanup.enter_context(BenchPodman(work / "p5-podman"))
    await asyncio.to_thread(import_busybox_image, engine, IMAGE)
    env = {
        "EDGELOADER_CDN_HOST": res.url,
        "EDGELOADER_CACHE_DIR": str(work / "p5-cache"),
        "DOCKER_HOST": engine.docker_host,
        "EDGELOADER_MODEL_MEMORY_MAX": str(size + 64 * MiB),
    }
    model = f"/models/{FOLDER}/{res.name}"
    script = f"busybox cat {model} > /dev/null && echo '\"read\"' > result.json"
    result = MountResult(server, size)
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        for i in range(runs + 1):  # the first round warms up (and pre-stages)
            log(f"P5 model mount, {mib} MiB: " + (f"run {i}/{runs}" if i else "warm-up"))
            with contextlib.ExitStack() as round_cleanup:
                child, url = await start_loader(upstream, round_cleanup, "p5", **env)
                auth = await login(http, url)
                if i == 0:
                    await _prestage(http, url, auth, res.name)
                    await _call(
                        http, "POST", f"{url}/api/functions", auth,
                        {"name": "p5-noop", "image": IMAGE, "command": ["true"]},
                    )  # fmt: skip
                    await _call(
                        http, "POST", f"{url}/api/functions", auth,
                        {"name": "p5", "image": IMAGE, "command": ["sh", "-c", script],
                         "models": [{"folder": FOLDER, "name": res.name}],
                         "limits": {"timeoutS": 600, "memoryMb": 256}},
                    )  # fmt: skip
                # A run without models first: the loader's one-time checks
                # (the engine, its cgroup driver, the mount probe) are not P5's.
                await _call(http, "POST", f"{url}/api/functions/p5-noop/invoke", auth, {})
                load = await via_loader(http, url, auth, res, Clock({"loader": child.pid}))
                first = await _invoke(http, url, auth)
                second = await _invoke(http, url, auth)
                if i > 0:
                    result.load.append(load.seconds)
                    result.first.append(first)
                    result.second.append(second)
    return result


async def _prestage(http: aiohttp.ClientSession, url: str, auth: dict[str, str], name: str) -> None:
    await _call(http, "POST", f"{url}/api/prefetch", auth, {"folder": FOLDER, "name": name})
    while True:
        status = await _call(http, "GET", f"{url}/api/prefetch/{FOLDER}/{name}", auth, None)
        if status["state"] == "done":
            return
        if status["state"] == "failed":
            raise RuntimeError(f"pre-staging failed: {status}")
        await asyncio.sleep(0.2)


async def _invoke(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> float:
    started = time.perf_counter()
    run = await _call(http, "POST", f"{url}/api/functions/p5/invoke", auth, {})
    took = time.perf_counter() - started
    if run["status"] != "succeeded" or run["result"] != "read":
        raise RuntimeError(f"the model run failed: {run}")
    return took


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, auth: dict[str, str], body: object
) -> dict[str, object]:
    async with http.request(method, url, json=body, headers=auth) as resp:
        answer: dict[str, object] = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status}: {answer}")
        return answer


def print_mount(result: MountResult, runs: int) -> None:
    load = statistics.median(result.load)
    first = statistics.median(result.first)
    second = statistics.median(result.second)
    ratio = first / load
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print()
    print("P5  a function's first invoke mounting a model vs POST /load of it")
    print(f"    {result.server}, {result.size // MiB} MiB v2, pre-staged in the cache;")
    print(f"    the store empty (the loader restarted each round); median of {runs} runs")
    print(f"    POST /load, read and hashed      {load:7.2f} s")
    print(
        f"    first invoke (decrypt + mount)   {first:7.2f} s   {ratio:.2f}x  {verdict}"
        f" (<= {TARGET})"
    )
    print(f"    second invoke (in the store)     {second:7.2f} s")
    own = first - second
    print(f"    the mount's own cost, first - second: {own:.2f} s ({own / load:.2f}x the load)")
    rows = (("load", result.load), ("first", result.first), ("second", result.second))
    for label, values in rows:
        print(f"    all runs, s, {label}: " + " ".join(f"{v:.2f}" for v in values))
