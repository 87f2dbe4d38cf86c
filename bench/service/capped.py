"""P2 on a capped link: a proxy that paces every connection (20 MB/s and
20 ms by default, tests/support/proxy.py in its own process) between the
S3 server and both consumers. POST /load with the loader's default settings
(parallel ranged reads) against one raw GET through the same proxy: what
parallel reads buy where each connection is capped (a CDN, an LTE cell)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import aiohttp
from tests.support.harness.s3 import async_s3_client

from bench.service import NO_TIMEOUT, MiB, log
from bench.service.load import S3_CONFIG, _round, publish, via_loader, via_s3
from bench.service.measure import Clock, Transfer, proc_status_bytes
from bench.service.stack import Upstream, login, start_loader
from bench.service.throttle import start_throttle


@dataclass
class CappedResult:
    server: str
    size: int
    rate: int  # bytes per second per connection
    latency: float
    loader: list[Transfer]
    raw: list[Transfer]
    idle_rss: int
    peak_rss: int


async def bench_capped(
    upstream: Upstream,
    server: str,
    size: int,
    rate: int,
    latency: float,
    runs: int,
    cleanup: contextlib.ExitStack,
) -> CappedResult:
    mib = size // MiB
    res = await publish(upstream, server, f"capped-{mib}mib.bin", size)
    proxy, proxy_url = await start_throttle(
        res.url, rate, latency, upstream.work, upstream.logs, cleanup
    )
    loader, url = await start_loader(
        upstream, cleanup, f"capped-{mib}mib", EDGELOADER_CDN_HOST=proxy_url
    )
    pids = {"server": upstream.servers[server][0].pid, "proxy": proxy.pid, "client": os.getpid()}
    result = CappedResult(server, size, rate, latency, [], [], 0, 0)
    result.idle_rss = proc_status_bytes(loader.pid, "VmRSS")
    raw_digests: dict[str, str] = {}
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
        async_s3_client(proxy_url, S3_CONFIG) as s3,
    ):
        auth = await login(http, url)
        for i in range(runs + 1):
            log(f"P2 capped link: {mib} MiB at {rate / 1e6:g} MB/s a connection, {_round(i, runs)}")
            # The warm-up is a load only: a raw GET at the capped rate is long
            # and has nothing to warm.
            if i > 0:
                result.raw.append(await via_s3(s3, res, Clock(pids), raw_digests))
            ours = await via_loader(http, url, auth, res, Clock(pids | {"loader": loader.pid}))
            if i > 0:
                result.loader.append(ours)
    result.peak_rss = proc_status_bytes(loader.pid, "VmHWM")
    loader.stop()
    proxy.stop()
    return result
