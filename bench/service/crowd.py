"""P2 with many clients: N concurrent POST /load of one resource through one
loader (default settings), against N concurrent raw GETs of its big part
from the same S3 server. Every load is hashed and must be the plaintext."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from tests.support.harness.s3 import async_s3_client

from bench.service import NO_TIMEOUT, MiB, log
from bench.service.load import S3_CONFIG, _round, publish, via_loader, via_s3
from bench.service.measure import Clock, Transfer, cpu_seconds, proc_status_bytes
from bench.service.stack import Upstream, login, start_loader
from edgeloader.config import DownloadSettings


@dataclass
class Round:
    seconds: float  # from the first request to the last byte of all
    nbytes: int  # all clients together
    cpu: dict[str, float]  # CPU seconds per process over the round

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


@dataclass
class CrowdResult:
    server: str
    size: int
    clients: int
    loader: list[Round]
    raw: list[Round]
    idle_rss: int
    peak_rss: int
    budget: int  # the loader's in-flight CDN bytes, all loads together

    @property
    def rss_bound(self) -> int:
        """Idle RSS + the budget + 32 MB: the bound the concurrency test holds."""
        return self.idle_rss + self.budget + 32_000_000


async def bench_crowd(
    upstream: Upstream,
    server: str,
    size: int,
    clients: int,
    runs: int,
    cleanup: contextlib.ExitStack,
) -> CrowdResult:
    mib = size // MiB
    res = await publish(upstream, server, f"crowd-{mib}mib.bin", size)
    loader, url = await start_loader(
        upstream, cleanup, f"crowd-{mib}mib", EDGELOADER_CDN_HOST=res.url
    )
    pids = {
        "server": upstream.servers[server][0].pid,
        "loader": loader.pid,
        "client": os.getpid(),
    }
    budget = int(
        upstream.loader_env.get(
            "EDGELOADER_DOWNLOAD_INFLIGHT_MAX", str(DownloadSettings().inflight_max)
        )
    )
    result = CrowdResult(server, size, clients, [], [], 0, 0, budget)
    result.idle_rss = proc_status_bytes(loader.pid, "VmRSS")
    raw_digests: dict[str, str] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT, connector=connector) as http,
        async_s3_client(res.url, S3_CONFIG) as s3,
    ):
        auth = await login(http, url)
        for i in range(runs + 1):
            log(f"P2 {clients} concurrent loads of {mib} MiB on {server}, {_round(i, runs)}")
            raw = await _round_of(
                pids, [via_s3(s3, res, Clock({}), raw_digests) for _ in range(clients)]
            )
            ours = await _round_of(
                pids, [via_loader(http, url, auth, res, Clock({})) for _ in range(clients)]
            )
            if i > 0:
                result.raw.append(raw)
                result.loader.append(ours)
    result.peak_rss = proc_status_bytes(loader.pid, "VmHWM")
    loader.stop()
    return result


async def _round_of(pids: dict[str, int], transfers: list[Coroutine[Any, Any, Transfer]]) -> Round:
    """Runs the transfers at once; every one must succeed (each checks its bytes)."""
    cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    done = await asyncio.gather(*transfers)
    seconds = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
    return Round(seconds, sum(t.nbytes for t in done), cpu)
