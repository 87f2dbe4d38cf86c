"""Parallel, resumed CDN reads on the real stack: moto, the reference
Resource API and the loader, with a TCP proxy between the loader and moto
that caps, cuts or stalls connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest

from edgeloader.auth.store import AuthStore
from edgeloader.config import CdnOverrides, DownloadSettings
from edgeloader.web.state import SERVICES
from tests.support.harness.loader import start_loader_process
from tests.support.harness.s3 import s3_client
from tests.support.proxy import CuttingProxy
from tests.support.releases import cached_entries, publish_v2
from tests.support.stack import ADMIN, Stack, pattern

KiB, MiB = 1024, 1024 * 1024
PART = 256 * KiB
PARALLEL = DownloadSettings(
    connections=4,
    part_size=PART,
    parallel_min=0,
    inflight_max=8 * MiB,
    stall_timeout=2.0,
    retries=5,
    retry_backoff=0.05,
)
SINGLE = replace(PARALLEL, connections=1)
MODES = {"parallel": PARALLEL, "single": SINGLE}
#: A bound no healthy run comes near; the tests assert outcomes, not times.
GENEROUS = 120


def publish(stack: Stack, fmt: int, name: str, data: bytes) -> None:
    if fmt == 1:
        stack.publish(name, data)
    else:
        publish_v2(stack, name, data)


@contextlib.asynccontextmanager
async def proxied(
    stack: Stack, downloads: DownloadSettings, *, cache: bool = True, **proxy: Any
) -> AsyncIterator[CuttingProxy]:
    """A loader whose CDN is moto behind a :class:`CuttingProxy`."""
    host, port = stack.s3_endpoint.removeprefix("http://").split(":")
    async with CuttingProxy(host, int(port), **proxy) as cutting:
        settings = stack.settings().with_overrides(
            cdn=CdnOverrides(host=cutting.url), downloads=downloads
        )
        if not cache:
            settings = settings.with_overrides(cache_dir=None)
        await stack.start_loader(settings)
        await stack.login()
        yield cutting


def cdn_read_metric(stack: Stack, name: str, **labels: str) -> float:
    """A series of the last loader started (in this process)."""
    registry = stack.runners[-1].app[SERVICES].metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


async def load_outcomes(stack: Stack) -> list[str]:
    """The audit's outcomes of loads, oldest first."""
    store = await asyncio.to_thread(AuthStore, stack.tmp / "state")
    try:
        entries = await asyncio.to_thread(store.audit, 0.0, 10_000)
    finally:
        store.close()
    return [e.outcome for e in entries if e.action == "load"]


# -- parallel and single-stream reads ---------------------------------------------------

# Plaintext sizes whose big parts end just before, on and after part
# boundaries (in v1 the big part is the ciphertext less 3072 bytes; v2
# parts are four chunks of 64 KiB), and small ones.
SIZES = [0, 1, 5000, PART - 1, PART, PART + 1]
SIZES += [k * PART + 3072 - 32 + d for k in (1, 2, 3) for d in (-17, 0, 17)]
SIZES += [4 * 65536 * k + d for k in (2, 3) for d in (-1, 0, 1)]


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_parallel_and_single_stream_loads_are_byte_identical(stack: Stack, fmt: int) -> None:
    published = {f"m{i}.bin": pattern(size) for i, size in enumerate(SIZES)}
    for name, data in published.items():
        publish(stack, fmt, name, data)
    urls = {}
    for mode, downloads in MODES.items():
        settings = stack.settings(cache_dir=None).with_overrides(downloads=downloads)
        urls[mode] = await stack.start_loader(settings)
        await stack.login()
    for mode, url in urls.items():
        stack.loader_url = url
        for name, data in published.items():
            assert await stack.load(name) == (200, data), (mode, name, len(data))


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_a_capped_link_is_read_over_several_connections(stack: Stack, fmt: int) -> None:
    """Each connection is capped and a part's body takes far longer than its
    first byte: the read widens while that pays, byte-identical throughout."""
    data = pattern(4 * MiB)
    publish(stack, fmt, "m.bin", data)
    peaks = {}
    for mode, settings in MODES.items():
        downloads = replace(settings, part_size=512 * KiB)
        async with proxied(stack, downloads, cache=False, rate=512 * KiB, latency=0.02) as proxy:
            status, length, body, cut = await stack.load_until_cut("m.bin")
            assert (status, length, body, cut) == (200, len(data), data, False), mode
            peaks[mode] = proxy.peak_streams
    assert peaks["single"] == 1
    assert peaks["parallel"] >= 3


async def test_fifty_loads_at_once_on_a_paced_link_are_whole_with_no_retries(
    stack: Stack,
) -> None:
    """Reads woken per piece (``upstream/cdn.py``, ``Wakeup``) on a link slow
    enough that they wait: 50 loads at once, of a big resource and then of a
    tiny one whose answers are smaller than any threshold, are
    byte-identical and succeed with no retries. (moto closes each connection,
    so reuse is tested in tests/integration/test_cdn_reads.py.)"""
    published = {"big.bin": pattern(MiB + 4321), "tiny.bin": pattern(5000)}
    for name, data in published.items():
        publish(stack, 1, name, data)
    downloads = replace(PARALLEL, retries=0)
    async with proxied(stack, downloads, cache=False, rate=4 * MiB):
        for name in ("big.bin", "tiny.bin", "big.bin", "tiny.bin"):
            answers = await asyncio.wait_for(
                asyncio.gather(*(stack.load(name) for _ in range(50))), GENEROUS
            )
            assert all(answer == (200, published[name]) for answer in answers), name
    assert set(await load_outcomes(stack)) == {"ok"}


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_slow_ranged_starts_give_one_stream_that_resumes_after_cuts(
    stack: Stack, fmt: int
) -> None:
    """Every answer starts late against its body (as on a server that reads
    the whole object per ranged GET): the read stays one stream, and a cut
    one resumes from its first missing byte, byte-identical."""
    data = pattern(3 * MiB)
    publish(stack, fmt, "m.bin", data)
    async with proxied(
        stack, PARALLEL, cache=False, latency=0.3, cut_at=[1_000_000, 2_000_000]
    ) as proxy:
        status, length, body, cut = await stack.load_until_cut("m.bin")
        assert proxy.cuts == 2
        assert proxy.peak_streams == 1
        assert proxy.bytes_down < 2 * len(data)
    assert (status, length, cut) == (200, len(data), False)
    assert body == data


# -- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_cut_connections_resume_and_the_load_is_byte_identical(
    stack: Stack, fmt: int, mode: str
) -> None:
    data = pattern(3 * MiB + 5)
    publish(stack, fmt, "m.bin", data)
    cut_at = [150_000, 900_000, 1_700_000, 2_600_000]
    async with proxied(stack, MODES[mode], cut_at=cut_at) as proxy:
        status, length, body, cut = await stack.load_until_cut("m.bin")
        assert proxy.cuts == len(cut_at)
        # Resumed from the last byte received, not read again from the start.
        assert proxy.bytes_down < 2 * len(data)
    assert (status, length, cut) == (200, len(data), False)
    assert body == data
    assert len(cached_entries(stack, "m.bin")) == 1  # complete and verified


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_a_stalled_cdn_cuts_the_body_and_the_audit_says_why(stack: Stack, fmt: int) -> None:
    data = pattern(3 * MiB)
    publish(stack, fmt, "m.bin", data)
    downloads = replace(PARALLEL, stall_timeout=0.5, retries=2)
    async with proxied(stack, downloads, stall_at=600_000) as proxy:
        async with asyncio.timeout(GENEROUS):
            status, length, body, cut = await stack.load_until_cut("m.bin")
        assert proxy.bytes_down <= 600_000
    assert (status, length, cut) == (200, len(data), True)
    assert len(body) < len(data)
    assert body == data[: len(body)]
    assert cached_entries(stack, "m.bin") == []
    # The audit entry is written once the handler has returned, which may
    # be after the client saw the cut.
    for _ in range(GENEROUS * 20):
        if outcomes := await load_outcomes(stack):
            break
        await asyncio.sleep(0.05)
    outcome = outcomes[-1]
    assert outcome.startswith("failed mid-stream: CDN read of"), outcome
    assert "after 3 failed tries: stalled: no bytes for 0.5 s" in outcome
    failures = "edgeloader_cdn_read_failures_total"
    assert cdn_read_metric(stack, failures, reason="retries-spent") >= 1
    assert cdn_read_metric(stack, "edgeloader_cdn_read_retries_total") >= 2


async def test_an_object_replaced_mid_load_aborts_it(stack: Stack) -> None:
    old = pattern(4 * MiB)
    stack.publish("m.bin", old)
    received = bytearray()
    replaced = False

    async def read_and_replace(resp: aiohttp.ClientResponse) -> None:
        nonlocal replaced
        async for chunk in resp.content.iter_any():
            received.extend(chunk)
            if len(received) >= 512 * KiB and not replaced:
                replaced = True
                await asyncio.to_thread(_republish_big, stack, "m.bin")

    async with proxied(stack, PARALLEL, rate=1 * MiB):
        url = f"{stack.loader_url}/load/m.bin"
        async with stack.http.post(url, json={"folder": stack.bucket}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_and_replace(resp)
    # The old version up to the cut, never a byte of the new one.
    assert 512 * KiB <= len(received) < len(old)
    assert bytes(received) == old[: len(received)]
    assert cached_entries(stack, "m.bin") == []
    outcome = (await load_outcomes(stack))[-1]
    assert "the object changed on the CDN" in outcome, outcome
    failures = "edgeloader_cdn_read_failures_total"
    assert cdn_read_metric(stack, failures, reason="object-changed") == 1


def _republish_big(stack: Stack, name: str) -> None:
    """Another object under the same key and of the same size (a new ETag)."""
    s3 = s3_client(stack.s3_endpoint)
    size = s3.head_object(Bucket=stack.bucket, Key=f"{name}.big")["ContentLength"]
    s3.put_object(Bucket=stack.bucket, Key=f"{name}.big", Body=pattern(size))


# -- memory under many loads ------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("source", ["cdn", "cache"])
async def test_fifty_concurrent_loads_stay_within_the_in_flight_budget(
    make_stack: Callable[..., Awaitable[Stack]], tmp_path: Path, source: str
) -> None:
    """50 loads of one 16 MiB resource at once, from the CDN (the cache is
    off) or served from the model cache: every one byte-identical, and the
    loader's peak RSS within its idle RSS + 64 MB."""
    stack = await make_stack()
    data = pattern(16 * MiB)
    stack.publish("big.bin", data)
    stack.publish("warm.bin", b"warm")
    expected = hashlib.sha256(data).hexdigest()
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as cleanup:
        child, url = await start_loader_process(
            stack.api_url,
            tmp_path / "loader-state",
            logs,
            cleanup,
            EDGELOADER_AUTH="compat",
            # Parallel reads (16 MiB is one stream by default): parts read ahead.
            EDGELOADER_DOWNLOAD_PARALLEL_MIN="0",
            **({"EDGELOADER_CACHE_DIR": str(tmp_path / "cache")} if source == "cache" else {}),
        )
        loader = psutil.Process(child.pid)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            login = {"email": ADMIN[0], "password": ADMIN[1]}
            async with http.post(f"{url}/login", json=login) as resp:
                assert resp.status == 200
            # Idle, with the clients a first load opens (the CDN's) open;
            # from the cache, after a first load of the resource wrote it.
            first = "big.bin" if source == "cache" else "warm.bin"
            async with http.post(f"{url}/load/{first}", json={"folder": stack.bucket}) as resp:
                assert resp.status == 200
                assert await resp.read() == (data if source == "cache" else b"warm")
            if source == "cache":
                assert list((tmp_path / "cache").rglob("*.big"))
            await asyncio.sleep(0.2)
            idle = loader.memory_info().rss
            # VmHWM from here on.
            await asyncio.to_thread(Path(f"/proc/{child.pid}/clear_refs").write_text, "5")
            sampled = idle

            async def one() -> tuple[int, str]:
                digest = hashlib.sha256()
                body = {"folder": stack.bucket}
                async with http.post(f"{url}/load/big.bin", json=body) as resp:
                    # A client that stops reading for a while, as agents do:
                    # the parts read ahead meanwhile wait in memory.
                    digest.update(await resp.content.readexactly(2 * MiB))
                    await asyncio.sleep(1)
                    async for chunk in resp.content.iter_chunked(256 * KiB):
                        digest.update(chunk)
                    return resp.status, digest.hexdigest()

            async def sample() -> None:
                nonlocal sampled
                while True:
                    sampled = max(sampled, loader.memory_info().rss)
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            try:
                results = await asyncio.gather(*(one() for _ in range(50)))
            finally:
                sampler.cancel()
            peak = max(sampled, peak_rss(child.pid))
    assert results == [(200, expected)] * 50
    assert peak <= idle + 64 * 1000 * 1000, (idle, peak)


# -- a CDN that ignores Range -----------------------------------------------------------


async def test_a_cdn_that_ignores_range_is_refused_without_buffering(
    stack: Stack, range_ignoring_proxy: Callable[[str], Awaitable[str]]
) -> None:
    from edgeloader.config import CdnOverrides

    data = pattern(4 * 1024 * 1024)
    stack.publish("m.bin", data)
    proxy = await range_ignoring_proxy(stack.s3_endpoint)
    await stack.start_loader(stack.settings(cache_dir=None, cdn=CdnOverrides(host=proxy)))
    await stack.login()
    status, body = await stack.load("m.bin")
    assert status == 502
    assert b"range" in body.lower()


@pytest.fixture
async def range_ignoring_proxy() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """An HTTP proxy in front of S3 that drops every ``Range`` header."""
    from aiohttp import web

    from tests.support.harness.net import serve

    runners: list[web.AppRunner] = []

    async def make(upstream: str) -> str:
        session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("range",)}
            body = await request.read()
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body
            ) as resp:
                out = web.StreamResponse(status=resp.status, headers=resp.headers)
                await out.prepare(request)
                async for chunk in resp.content.iter_chunked(1 << 16):
                    await out.write(chunk)
                await out.write_eof()
                return out

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        app.on_cleanup.append(lambda _: session.close())
        runner, url = await serve(app)
        runners.append(runner)
        return url

    yield make
    for runner in runners:
        await runner.cleanup()
