"""P2 on loopback: POST /load through the loader against a raw aiobotocore
GET of the same big part from the same S3 server. Both consumers hash
(SHA-256) every byte they receive, so both do the same work per byte; the
loader's digest must be the published plaintext's.

Also what the capped-link (``capped``) and concurrency (``crowd``) parts
share: publishing to a given server and the two consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from botocore.config import Config
from tests.support.harness.s3 import async_s3_client

from bench.service import CHUNK, NO_TIMEOUT, BenchError, MiB, log
from bench.service.measure import Clock, Transfer, proc_status_bytes
from bench.service.stack import EMAIL, FOLDER, PASSWORD, Upstream, login, start_loader
from edgeloader import crypto
from edgeloader.config import CdnOverrides
from edgeloader.services.session import fetch_cdn_config
from edgeloader.services.upload import Uploader
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader_publisher.resource import PUBLISHER_HARDWARE

# The loader's request pattern at its widest (services/download.py defaults):
# what a raw reader gets from the same server when it reads like the loader.
RANGE_PART, RANGE_WIDTH = 8 * MiB, 4
S3_CONFIG = Config(read_timeout=300, s3={"addressing_style": "path"}, max_pool_connections=64)


@dataclass
class LoopbackResult:
    server: str
    size: int
    loader: list[Transfer]
    loader_v2: list[Transfer]  # the same plaintext published in format v2
    loader_cached: list[Transfer]  # v1 through a loader with a model cache (written as it loads)
    raw: list[Transfer]
    raw_ranges: list[Transfer]  # the loader's pattern: RANGE_WIDTH ranges of RANGE_PART at once
    tail: list[float]  # seconds for a ranged GET of the big part's last 32 bytes
    idle_rss: int
    peak_rss: int


@dataclass
class Published:
    server: str
    url: str
    name: str
    size: int
    sha256: str  # of the plaintext

    @property
    def big(self) -> str:
        return f"{self.name}.big"


async def publish(upstream: Upstream, server: str, name: str, size: int, fmt: int = 1) -> Published:
    """Publishes ``size`` bytes in format ``fmt`` through the loader's own
    upload pipeline (encrypt, split, multipart upload of the big part) to
    the S3 server ``server``, one chunk in memory. The plaintext repeats one
    random MiB; the ciphertext does not repeat."""
    block = os.urandom(CHUNK)
    digest = hashlib.sha256()
    url = upstream.servers[server][1]

    async def plaintext() -> AsyncIterator[bytes]:
        for offset in range(0, size, CHUNK):
            piece = block[: min(CHUNK, size - offset)]
            digest.update(piece)
            yield piece

    log(f"publishing {size // MiB} MiB (v{fmt}) to {server} as {FOLDER}/{name}")
    async with aiohttp.ClientSession() as http:
        api = ResourceApiClient(upstream.api_url, http, timeout=120)
        await api.login(EMAIL, PASSWORD)
        key = crypto.api_key(EMAIL, PASSWORD, PUBLISHER_HARDWARE)
        config = await fetch_cdn_config(api, key, PUBLISHER_HARDWARE, CdnOverrides(host=url))
        async with Cdn(config) as cdn:
            staged = await Uploader().upload(
                cdn, api, FOLDER, name, plaintext(), part_size=64 * MiB, fmt=fmt
            )
    if staged.plaintext_bytes != size:
        raise BenchError(f"published {staged.plaintext_bytes} bytes of {name}, not {size}")
    return Published(server, url, name, size, digest.hexdigest())


async def via_loader(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], res: Published, clock: Clock
) -> Transfer:
    """The loader's /load, read in 1 MiB pieces and hashed; the digest must
    be the plaintext's."""
    body = {"folder": FOLDER}
    digest = hashlib.sha256()
    async with http.post(f"{url}/load/{res.name}", json=body, headers=auth) as resp:
        clock.mark_first_byte()
        if resp.status != 200:
            raise BenchError(f"/load/{res.name}: HTTP {resp.status}: {await resp.text()}")
        expected, done = resp.content_length, 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            digest.update(chunk)
            done += len(chunk)
    if done != expected or digest.hexdigest() != res.sha256:
        raise BenchError(f"/load/{res.name}: {done} bytes of {expected}, not the plaintext")
    return clock.stop(done)


async def via_s3(s3: Any, res: Published, clock: Clock, sha256: dict[str, str]) -> Transfer:
    """A raw GET of the big part, read with iter_chunks(1 MiB) and hashed;
    the digest must be the same on every GET (``sha256`` keeps the first)."""
    resp = await s3.get_object(Bucket=FOLDER, Key=res.big)
    clock.mark_first_byte()
    expected, done = int(resp["ContentLength"]), 0
    digest = hashlib.sha256()
    async with resp["Body"] as body:
        async for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
            done += len(chunk)
    first = sha256.setdefault(res.big, digest.hexdigest())
    if done != expected or digest.hexdigest() != first:
        raise BenchError(f"GET {res.big}: {done} bytes of {expected}, or other bytes than before")
    return clock.stop(done)


async def via_s3_ranges(s3: Any, res: Published, clock: Clock, sha256: dict[str, str]) -> Transfer:
    """The big part as RANGE_WIDTH ranged GETs of RANGE_PART at once, each
    read with iter_chunks(1 MiB), hashed in order (parts wait in memory for
    the ones before them); the digest must be the raw GETs'."""
    head = await s3.head_object(Bucket=FOLDER, Key=res.big)
    size = int(head["ContentLength"])
    slots = asyncio.Semaphore(RANGE_WIDTH)
    clock.mark_first_byte()

    async def part(start: int) -> list[bytes]:
        async with slots:
            end = min(start + RANGE_PART, size) - 1
            resp = await s3.get_object(Bucket=FOLDER, Key=res.big, Range=f"bytes={start}-{end}")
            async with resp["Body"] as body:
                return [chunk async for chunk in body.iter_chunks(CHUNK)]

    digest, done = hashlib.sha256(), 0
    tasks = [asyncio.create_task(part(start)) for start in range(0, size, RANGE_PART)]
    try:
        for task in tasks:
            for chunk in await task:
                digest.update(chunk)
                done += len(chunk)
    finally:
        for task in tasks:
            task.cancel()
    if done != size or digest.hexdigest() != sha256.get(res.big):
        raise BenchError(f"ranged GETs of {res.big}: {done} bytes of {size}, or other bytes")
    return clock.stop(done)


async def tail_get(s3: Any, res: Published) -> float:
    """Seconds for the ranged GET the loader makes to learn the plaintext length."""
    start = time.perf_counter()
    resp = await s3.get_object(Bucket=FOLDER, Key=res.big, Range="bytes=-32")
    async with resp["Body"] as body:
        await body.read()
    return time.perf_counter() - start


def drop_entries(cache: Path) -> None:
    """Empties a loader's model cache, so that its next load comes from the
    CDN and writes the cache again."""
    for entry in cache.rglob("*.big"):
        entry.unlink()


async def bench_loopback(
    upstream: Upstream,
    cases: list[tuple[str, int]],
    runs: int,
    cleanup: contextlib.ExitStack,
) -> list[LoopbackResult]:
    """Each (server, size), with a fresh loader (default settings) reading
    from that server; raw GET and loads alternate."""
    results = []
    for server, size in cases:
        mib = size // MiB
        res = await publish(upstream, server, f"p2-{server}-{mib}mib.bin", size)
        res_v2 = await publish(upstream, server, f"p2-{server}-{mib}mib-v2.bin", size, fmt=2)
        loader, url = await start_loader(
            upstream, cleanup, f"p2-{server}-{mib}mib", EDGELOADER_CDN_HOST=res.url
        )
        cache = upstream.work / f"cache-p2-{server}-{mib}mib"
        cached, cached_url = await start_loader(
            upstream,
            cleanup,
            f"p2-{server}-{mib}mib-cache",
            EDGELOADER_CDN_HOST=res.url,
            EDGELOADER_CACHE_DIR=str(cache),
        )
        pids = {"server": upstream.servers[server][0].pid, "client": os.getpid()}
        idle_rss = proc_status_bytes(loader.pid, "VmRSS")
        result = LoopbackResult(server, size, [], [], [], [], [], [], idle_rss, 0)
        raw_digests: dict[str, str] = {}
        async with (
            aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
            async_s3_client(res.url, S3_CONFIG) as s3,
        ):
            auth = await login(http, url)
            cached_auth = await login(http, cached_url)
            for i in range(runs + 1):  # the first round warms up
                log(f"P2 loopback on {server}: {mib} MiB, " + _round(i, runs))
                raw = await via_s3(s3, res, Clock(pids), raw_digests)
                ranges = await via_s3_ranges(s3, res, Clock(pids), raw_digests)
                with_loader = pids | {"loader": loader.pid}
                ours = await via_loader(http, url, auth, res, Clock(with_loader))
                ours_v2 = await via_loader(http, url, auth, res_v2, Clock(with_loader))
                await asyncio.to_thread(drop_entries, cache)
                with_cache = pids | {"loader": cached.pid}
                ours_cached = await via_loader(
                    http, cached_url, cached_auth, res, Clock(with_cache)
                )
                tail = await tail_get(s3, res)
                if i > 0:
                    result.loader_cached.append(ours_cached)
                    result.raw.append(raw)
                    result.raw_ranges.append(ranges)
                    result.loader.append(ours)
                    result.loader_v2.append(ours_v2)
                    result.tail.append(tail)
        result.peak_rss = proc_status_bytes(loader.pid, "VmHWM")
        loader.stop()
        cached.stop()
        results.append(result)
    return results


def _round(i: int, runs: int) -> str:
    return "warm-up" if i == 0 else f"run {i}/{runs}"
