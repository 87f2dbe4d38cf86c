"""P2: POST /load through the loader against a raw S3 GET of the same big
part from the same moto server."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
from edgeloader.services.upload import upload_resource
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader_publisher.resource import PUBLISHER_HARDWARE

S3_CONFIG = Config(read_timeout=300, s3={"addressing_style": "path"})


@dataclass
class P2Result:
    size: int
    loader: list[Transfer]
    loader_v2: list[Transfer]  # the same plaintext published in format v2
    raw: list[Transfer]
    tail: list[float]  # seconds for a ranged GET of the big part's last 32 bytes
    idle_rss: int
    peak_rss: int


async def publish(upstream: Upstream, name: str, size: int, fmt: int = 1) -> None:
    """Publishes ``size`` bytes in format ``fmt`` through the loader's own
    upload pipeline (encrypt, split, multipart upload of the big part), one
    chunk in memory. The plaintext repeats one random MiB; the ciphertext
    does not repeat."""
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
            staged = await upload_resource(
                cdn, api, FOLDER, name, plaintext(), part_size=64 * MiB, fmt=fmt
            )
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
        name_v2 = f"p2-{size // MiB}mib-v2.bin"
        log(f"P2: publishing {size // MiB} MiB as {FOLDER}/{name} (v1) and {name_v2} (v2)")
        await publish(upstream, name, size)
        await publish(upstream, name_v2, size, fmt=2)
        loader, url = await start_loader(upstream, cleanup, f"p2-{size // MiB}mib")
        me, moto = os.getpid(), upstream.moto.pid
        idle_rss = proc_status_bytes(loader.pid, "VmRSS")
        result = P2Result(size, [], [], [], [], idle_rss, 0)
        async with (
            aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
            async_s3_client(upstream.s3_url, S3_CONFIG) as s3,
        ):
            auth = await login(http, url)
            for i in range(runs + 1):  # the first round warms up
                log(f"P2: {size // MiB} MiB, {'warm-up' if i == 0 else f'run {i}/{runs}'}")
                raw = await via_s3(s3, name, Clock({"moto": moto, "client": me}))
                pids = {"moto": moto, "loader": loader.pid, "client": me}
                ours = await via_loader(http, url, auth, name, Clock(pids))
                ours_v2 = await via_loader(http, url, auth, name_v2, Clock(pids))
                tail = await tail_get(s3, name)
                if i > 0:
                    result.raw.append(raw)
                    result.loader.append(ours)
                    result.loader_v2.append(ours_v2)
                    result.tail.append(tail)
        result.peak_rss = proc_status_bytes(loader.pid, "VmHWM")
        loader.stop()
        results.append(result)
    return results
