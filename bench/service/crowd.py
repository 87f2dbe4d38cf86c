"""P2 with many clients: N concurrent POST /load of one resource through one
loader with a model cache, against N concurrent raw GETs of its big part
from the same S3 server. Each round is run twice: once from the CDN (the
cache emptied first; one load writes it) and once served from the cache.
Every load is hashed and must be the plaintext; the loader's peak RSS is
taken per round (VmHWM, reset before it) against its idle RSS after a
first load (the CDN client made, the cache written once)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.harness.s3 import async_s3_client

from bench.service import NO_TIMEOUT, MiB, log
from bench.service.load import S3_CONFIG, _round, drop_entries, publish, via_loader, via_s3
from bench.service.measure import Clock, Transfer, cpu_seconds, proc_status_bytes
from bench.service.signed import list_resource, sign_release
from bench.service.stack import FOLDER, Upstream, login, start_loader

#: The most a crowd may add to the loader's idle RSS (issue target).
RSS_ALLOWANCE = 64_000_000


@dataclass
class Round:
    seconds: float  # from the first request to the last byte of all
    nbytes: int  # all clients together
    cpu: dict[str, float]  # CPU seconds per process over the round
    peak_rss: int = 0  # the loader's, over the round

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


@dataclass
class CrowdResult:
    server: str
    size: int
    clients: int
    label: str  # "v1", or "v2 signed" (1 MiB segments under a release)
    idle_rss: int
    from_cdn: list[Round] = field(default_factory=list)
    from_cache: list[Round] = field(default_factory=list)
    raw: list[Round] = field(default_factory=list)

    @property
    def rss_bound(self) -> int:
        return self.idle_rss + RSS_ALLOWANCE


def reset_peak_rss(pid: int) -> None:
    """Starts the process's VmHWM afresh (Linux: 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def bench_crowd(
    upstream: Upstream,
    server: str,
    size: int,
    clients: int,
    runs: int,
    cleanup: contextlib.ExitStack,
    *,
    signed: bool = False,
) -> CrowdResult:
    mib = size // MiB
    label = "v2 signed" if signed else "v1"
    tag = f"crowd-{mib}mib-{'signed' if signed else 'v1'}"
    res = await publish(upstream, server, f"{tag}.bin", size, fmt=2 if signed else 1)
    env = {"EDGELOADER_CDN_HOST": res.url}
    if signed:
        artifact = await list_resource(upstream, res)
        public = await sign_release(upstream, {f"{FOLDER}/{res.name}": artifact})
        env["EDGELOADER_PUBLISHER_KEY"] = str(public)
    cache = upstream.work / f"cache-{tag}"
    env["EDGELOADER_CACHE_DIR"] = str(cache)
    loader, url = await start_loader(upstream, cleanup, tag, **env)
    pids = {"server": upstream.servers[server][0].pid, "loader": loader.pid, "client": os.getpid()}
    raw_digests: dict[str, str] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT, connector=connector) as http,
        async_s3_client(res.url, S3_CONFIG) as s3,
    ):
        auth = await login(http, url)
        # Idle after a first load: the CDN client exists, the cache was written once.
        await via_loader(http, url, auth, res, Clock({}))
        await asyncio.sleep(0.5)
        result = CrowdResult(server, size, clients, label, proc_status_bytes(loader.pid, "VmRSS"))

        def loads() -> list[Coroutine[Any, Any, Transfer]]:
            return [via_loader(http, url, auth, res, Clock({})) for _ in range(clients)]

        for i in range(runs + 1):
            log(f"P2 {clients} concurrent loads of {mib} MiB ({label}), {_round(i, runs)}")
            raw = await _round_of(
                pids, [via_s3(s3, res, Clock({}), raw_digests) for _ in range(clients)]
            )
            await asyncio.to_thread(drop_entries, cache)
            from_cdn = await _round_of(pids, loads(), rss_of=loader.pid)
            from_cache = await _round_of(pids, loads(), rss_of=loader.pid)
            if i > 0:
                result.raw.append(raw)
                result.from_cdn.append(from_cdn)
                result.from_cache.append(from_cache)
    loader.stop()
    return result


async def _round_of(
    pids: dict[str, int],
    transfers: list[Coroutine[Any, Any, Transfer]],
    rss_of: int | None = None,
) -> Round:
    """Runs the transfers at once; every one must succeed (each checks its bytes)."""
    if rss_of is not None:
        reset_peak_rss(rss_of)
    cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    done = await asyncio.gather(*transfers)
    seconds = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
    peak = proc_status_bytes(rss_of, "VmHWM") if rss_of is not None else 0
    return Round(seconds, sum(t.nbytes for t in done), cpu, peak)
