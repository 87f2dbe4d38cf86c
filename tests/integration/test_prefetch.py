"""Pre-staging on the real stack: moto, the reference Resource API and the
loader (in this process, or as its own process to be killed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeloader.auth.store import AuthStore
from edgeloader.config import CdnOverrides, DownloadSettings
from edgeloader.events import PREFETCH
from edgeloader.services.prefetch import JOURNAL_FILE
from edgeloader.web.state import SERVICES
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import dead_url, wait_for
from tests.support.harness.s3 import s3_client
from tests.support.proxy import CuttingProxy
from tests.support.releases import (
    Publisher,
    artifact_of,
    cached_entries,
    forge_v2,
    publish_segments,
    publish_v2,
)
from tests.support.stack import ADMIN, OPERATOR, Stack, pattern

KiB, MiB = 1024, 1024 * 1024
PARALLEL = DownloadSettings(
    connections=4,
    part_size=256 * KiB,
    parallel_min=0,
    inflight_max=8 * MiB,
    stall_timeout=2.0,
    retries=5,
    retry_backoff=0.05,
)
JSON = dict[str, Any]


class Api:
    """The pre-staging routes, with an access token."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.token = ""

    async def sign_in(self) -> None:
        """The device's login (Azaion's /login) and an access token."""
        creds = {"email": ADMIN[0], "password": ADMIN[1]}
        async with self.http.post(f"{self.url}/login", json=creds) as resp:
            assert resp.status == 200, await resp.text()
        await self.token_only()

    async def token_only(self, user: tuple[str, str] = ADMIN) -> None:
        creds = {"email": user[0], "password": user[1]}
        async with self.http.post(f"{self.url}/api/auth/login", json=creds) as resp:
            assert resp.status == 200, await resp.text()
            self.token = (await resp.json())["accessToken"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def start(self, folder: str, name: str) -> tuple[int, JSON]:
        body = {"folder": folder, "name": name}
        async with self.http.post(
            f"{self.url}/api/prefetch", json=body, headers=self.headers
        ) as resp:
            return resp.status, await resp.json()

    async def status(self, folder: str, name: str) -> tuple[int, JSON]:
        async with self.http.get(
            f"{self.url}/api/prefetch/{folder}/{name}", headers=self.headers
        ) as resp:
            return resp.status, await resp.json()

    async def finished(self, folder: str, name: str, within: float = 120) -> JSON:
        """The status once the job is done or failed."""
        last: JSON = {}

        async def ended() -> bool:
            nonlocal last
            status, last = await self.status(folder, name)
            assert status == 200, last
            return last["state"] in ("done", "failed")

        await wait_for(ended, within, failure=f"pre-staging did not end: {last}")
        return last


def big_part(stack: Stack, name: str) -> bytes:
    body = s3_client(stack.s3_endpoint).get_object(Bucket=stack.bucket, Key=f"{name}.big")
    return bytes(body["Body"].read())


def small_part(stack: Stack, name: str) -> bytes:
    return (stack.api_dir / "resources" / stack.bucket / f"{name}.small").read_bytes()


def publish(stack: Stack, fmt: int, name: str, data: bytes) -> None:
    if fmt == 1:
        stack.publish(name, data)
    else:
        publish_v2(stack, name, data)


async def start_api(stack: Stack, **overrides: Any) -> Api:
    settings = stack.settings(**overrides).with_overrides(downloads=PARALLEL)
    api = Api(stack.http, await stack.start_loader(settings))
    await api.sign_in()
    return api


# -- the routes, and a load served from what was pre-staged ----------------------------


async def test_jobs_are_bounded_per_caller_and_in_all_and_leave_when_finished(
    stack: Stack,
) -> None:
    settings = stack.settings(prefetch_max_jobs=3, prefetch_max_jobs_per_caller=2)
    url = await stack.start_loader(settings)
    admin, operator = Api(stack.http, url), Api(stack.http, url)
    await admin.token_only()
    await operator.token_only(OPERATOR)
    # The device is not logged in upstream: every job waits.
    assert [(await admin.start("jobs", n))[0] for n in ("a", "b")] == [202, 202]
    status, body = await admin.start("jobs", "c")
    assert (status, body["detail"]) == (
        429,
        "you have 2 unfinished pre-staging jobs; retry when one has finished",
    )
    assert (await operator.start("jobs", "d"))[0] == 202
    status, body = await operator.start("jobs", "e")
    assert status == 429
    assert "3 pre-staging jobs are unfinished" in body["detail"]
    assert (await admin.start("jobs", "a"))[0] == 202  # a job already running is no new job
    await admin.sign_in()  # now they run, and fail: nothing is published
    for name in ("a", "b", "d"):
        assert (await admin.finished("jobs", name))["state"] == "failed"
    assert (await admin.start("jobs", "c"))[0] == 202


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_prefetch_then_a_load_with_the_cdn_down(stack: Stack, fmt: int) -> None:
    data = pattern(3 * MiB + 77)
    publish(stack, fmt, "m.bin", data)
    api = await start_api(stack)
    events = stack.runners[-1].app[SERVICES].events.subscribe("Admin", "admin")
    # Two callers at once: one job.
    (status, started), again = await asyncio.gather(
        api.start(stack.bucket, "m.bin"), api.start(stack.bucket, "m.bin")
    )
    assert status == again[0] == 202
    assert started["state"] in ("running", "waiting")
    finished = await api.finished(stack.bucket, "m.bin")
    total = len(small_part(stack, "m.bin")) + len(big_part(stack, "m.bin"))
    assert finished == {
        "folder": stack.bucket,
        "name": "m.bin",
        "state": "done",
        "bytesDone": total,
        "bytesTotal": total,
        "error": None,
    }
    [entry] = cached_entries(stack, "m.bin")
    assert entry.read_bytes() == big_part(stack, "m.bin")  # ciphertext, the big part only
    seen = []
    while (event := await events.next(0.1)) is not None:
        if event.type == PREFETCH:
            seen.append(dict(event.data))
    assert seen[-1] == finished

    # Asked again: found in the cache, nothing read.
    assert (await api.start(stack.bucket, "m.bin"))[0] == 202
    assert await api.finished(stack.bucket, "m.bin") == finished
    assert cached_entries(stack, "m.bin") == [entry]

    await stack.start_loader(stack.settings().with_overrides(cdn=CdnOverrides(host=dead_url())))
    await stack.login()
    assert await stack.load("m.bin") == (200, data)


async def test_fifty_requests_at_once_start_one_job(stack: Stack) -> None:
    data = pattern(2 * MiB + 3)
    publish(stack, 2, "m.bin", data)
    api = await start_api(stack)
    answers = await asyncio.gather(*(api.start(stack.bucket, "m.bin") for _ in range(50)))
    assert {status for status, _ in answers} == {202}
    finished = await api.finished(stack.bucket, "m.bin")
    assert finished["state"] == "done", finished
    [entry] = cached_entries(stack, "m.bin")
    assert entry.read_bytes() == big_part(stack, "m.bin")
    journal = f"file:{stack.tmp / 'state' / JOURNAL_FILE}?mode=ro"
    with contextlib.closing(sqlite3.connect(journal, uri=True)) as db:
        assert db.execute("SELECT COUNT(*) FROM prefetch").fetchone() == (1,)
    assert await stack.load("m.bin") == (200, data)


async def test_prefetch_is_audited_and_needs_a_token(stack: Stack) -> None:
    stack.publish("m.bin", pattern(1000))
    api = await start_api(stack)
    api.token = ""
    assert (await api.start(stack.bucket, "m.bin"))[0] == 401
    assert (await api.status(stack.bucket, "m.bin"))[0] == 401
    await api.token_only()
    assert (await api.start(stack.bucket, "m.bin"))[0] == 202
    assert (await api.finished(stack.bucket, "m.bin"))["state"] == "done"
    store = await asyncio.to_thread(AuthStore, stack.tmp / "state")
    try:
        entries = await asyncio.to_thread(store.audit, 0.0, 1000)
    finally:
        store.close()
    audited = [(e.action, e.resource, e.outcome, e.subject) for e in entries]
    assert ("prefetch", f"{stack.bucket}/m.bin", "ok", f"user:{ADMIN[0]}") in audited


async def test_prefetch_refusals(stack: Stack) -> None:
    api = await start_api(stack)
    assert (await api.status(stack.bucket, "never.bin"))[0] == 404
    assert (await api.start("../etc", "m.bin"))[0] == 400
    assert (await api.start(stack.bucket, ".hidden"))[0] == 400
    async with api.http.post(
        f"{api.url}/api/prefetch", json={"folder": stack.bucket}, headers=api.headers
    ) as resp:
        assert resp.status == 422
    # A resource that is not published: the job fails and says so.
    assert (await api.start(stack.bucket, "absent.bin"))[0] == 202
    failed = await api.finished(stack.bucket, "absent.bin")
    assert failed["state"] == "failed"
    assert "not found" in failed["error"]

    no_cache = await start_api(stack, cache_dir=None)
    status, body = await no_cache.start(stack.bucket, "m.bin")
    assert status == 409
    assert "EDGELOADER_CACHE_DIR" in body["detail"]


# -- the manifest -----------------------------------------------------------------------


async def test_prefetch_is_checked_against_the_manifest(publisher: Publisher) -> None:
    stack = publisher.stack
    data = pattern(2 * MiB)
    good_ct = publish_v2(stack, "good.bin", data)
    bad_ct = publish_v2(stack, "bad.bin", data)
    for name, ct in (("good.bin", good_ct), ("bad.bin", bad_ct)):
        publish_segments(stack, name, ct)
    # The CDN's bad.bin is sealed under its genuine header: every chunk
    # verifies, only its segments do not.
    forged, _ = forge_v2(bad_ct, data, 20)
    cut = len(small_part(stack, "bad.bin"))
    s3_client(stack.s3_endpoint).put_object(
        Bucket=stack.bucket, Key="bad.bin.big", Body=forged[cut:]
    )
    publisher.release(
        1,
        {
            f"{stack.bucket}/good.bin": artifact_of(good_ct),
            f"{stack.bucket}/bad.bin": artifact_of(bad_ct),
        },
    )
    api = await start_api(stack, publisher_key=publisher.public)

    await api.start(stack.bucket, "good.bin")
    assert (await api.finished(stack.bucket, "good.bin"))["state"] == "done"
    assert len(cached_entries(stack, "good.bin")) == 1

    await api.start(stack.bucket, "bad.bin")
    failed = await api.finished(stack.bucket, "bad.bin")
    assert failed["state"] == "failed"
    assert failed["error"].startswith("integrity: hash: segment "), failed
    assert cached_entries(stack, "bad.bin") == []  # neither an entry nor a partial file


async def test_a_resumed_job_checks_its_partial_file_again(publisher: Publisher) -> None:
    """The box's disk is not trusted: after a restart, what the partial file
    holds is verified by segments again before the job goes on from it."""
    stack = publisher.stack
    data = pattern(6 * MiB)
    ct = publish_v2(stack, "m.bin", data)
    publish_segments(stack, "m.bin", ct)
    publisher.release(1, {f"{stack.bucket}/m.bin": artifact_of(ct)})
    host, port = stack.s3_endpoint.removeprefix("http://").split(":")
    async with CuttingProxy(host, int(port), rate=1 * MiB) as slow:
        settings = stack.settings(
            publisher_key=publisher.public, cdn=CdnOverrides(host=slow.url)
        ).with_overrides(downloads=PARALLEL)
        api = Api(stack.http, await stack.start_loader(settings))
        await api.sign_in()
        assert (await api.start(stack.bucket, "m.bin"))[0] == 202

        async def checkpointed() -> bool:
            return journal_good(stack.tmp / "state") >= 2 * MiB

        await wait_for(checkpointed, within=60)
        await stack.runners.pop().cleanup()
    [partial] = [p for p in cached_entries(stack, "m.bin") if p.suffix == ".prefetch"]
    damaged = bytearray(partial.read_bytes())
    damaged[1000] ^= 1  # in the first segment: nothing of the file can be kept
    partial.write_bytes(bytes(damaged))

    api = await start_api(stack, publisher_key=publisher.public)
    finished = await api.finished(stack.bucket, "m.bin")
    assert finished["state"] == "done", finished
    [entry] = cached_entries(stack, "m.bin")
    assert entry.read_bytes() == big_part(stack, "m.bin")
    registry = stack.runners[-1].app[SERVICES].metrics.registry
    assert registry.get_sample_value("edgeloader_integrity_failures_total", {"reason": "hash"}) == 1
    await stack.login()
    assert await stack.load("m.bin") == (200, data)


# -- a killed service resumes -----------------------------------------------------------


def journal_good(state: Path) -> int:
    """The bytes the journal counts as good, read as a separate reader."""
    path = state / JOURNAL_FILE
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT good FROM prefetch").fetchone()
    return int(row[0]) if row else 0


async def test_a_killed_service_resumes_its_prefetch_and_the_cache_serves_offline(
    make_stack: Callable[..., Awaitable[Stack]], tmp_path: Path
) -> None:
    stack = await make_stack()
    data = pattern(12 * MiB)
    publish_v2(stack, "m.bin", data)
    big = big_part(stack, "m.bin")
    state, cache, logs = tmp_path / "loader-state", tmp_path / "loader-cache", tmp_path / "logs"
    logs.mkdir()
    host, port = stack.s3_endpoint.removeprefix("http://").split(":")
    proxies = contextlib.AsyncExitStack()
    proxy = await proxies.enter_async_context(CuttingProxy(host, int(port), rate=1 * MiB))
    env = {
        "EDGELOADER_AUTH": "compat",
        "EDGELOADER_CACHE_DIR": str(cache),
        "EDGELOADER_CDN_HOST": proxy.url,
        "EDGELOADER_DOWNLOAD_CONNECTIONS": "2",
        "EDGELOADER_DOWNLOAD_PART_SIZE": str(1 * MiB),
        "EDGELOADER_DOWNLOAD_PARALLEL_MIN": "0",
    }
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            with contextlib.ExitStack() as cleanup:
                child, url = await start_loader_process(stack.api_url, state, logs, cleanup, **env)
                api = Api(http, url)
                await api.sign_in()
                assert (await api.start(stack.bucket, "m.bin"))[0] == 202

                async def checkpointed() -> bool:
                    return journal_good(state) >= 3 * MiB

                await wait_for(checkpointed, within=120)
                os.kill(child.pid, signal.SIGKILL)
                child.process.wait()
            kept = journal_good(state)
            assert 3 * MiB <= kept < len(big)
            before = proxy.bytes_down

            with contextlib.ExitStack() as cleanup:
                child, url = await start_loader_process(stack.api_url, state, logs, cleanup, **env)
                api = Api(http, url)
                await api.token_only()
                status, waiting = await api.status(stack.bucket, "m.bin")
                assert status == 200
                assert waiting["state"] == "waiting"
                assert waiting["error"] == "the device is not logged in upstream"
                await api.sign_in()  # the job resumes once the device is logged in
                finished = await api.finished(stack.bucket, "m.bin")
                assert finished["state"] == "done", finished
                fetched_after_restart = proxy.bytes_down - before
                # Resumed, not started over: what the journal kept was not read again.
                assert 0 < fetched_after_restart < len(big)
                [entry] = cached_entries_in(cache, stack.bucket, "m.bin")
                assert entry.read_bytes() == big

                await proxies.aclose()  # the CDN is gone
                body = {"folder": stack.bucket}
                async with http.post(f"{url}/load/m.bin", json=body) as resp:
                    assert (resp.status, await resp.read()) == (200, data)
        finally:
            await proxies.aclose()


def cached_entries_in(cache: Path, folder: str, name: str) -> list[Path]:
    return [p for p in (cache / folder / name).iterdir() if p.suffix == ".big"]


async def test_a_job_resumed_at_start_up_counts_its_cdn_retries(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    """Jobs resumed by the app itself, outside any request, record in the
    app's metrics like any other read (a retry after a cut, here)."""
    stack = await make_stack()
    data = pattern(6 * MiB)
    publish_v2(stack, "m.bin", data)
    host, port = stack.s3_endpoint.removeprefix("http://").split(":")
    async with contextlib.AsyncExitStack() as proxies:
        slow = await proxies.enter_async_context(CuttingProxy(host, int(port), rate=1 * MiB))
        settings = stack.settings(cdn=CdnOverrides(host=slow.url)).with_overrides(
            downloads=PARALLEL
        )
        api = Api(stack.http, await stack.start_loader(settings))
        await api.sign_in()
        assert (await api.start(stack.bucket, "m.bin"))[0] == 202

        async def checkpointed() -> bool:
            return journal_good(stack.tmp / "state") >= 1 * MiB

        await wait_for(checkpointed, within=60)
        await stack.runners.pop().cleanup()  # the job stops; its journal stays

        # The next app resumes the job at start-up; its first read is cut once.
        kept = journal_good(stack.tmp / "state")
        cutting = await proxies.enter_async_context(
            CuttingProxy(host, int(port), cut_at=[256 * KiB])
        )
        settings = stack.settings(cdn=CdnOverrides(host=cutting.url)).with_overrides(
            downloads=PARALLEL
        )
        api = Api(stack.http, await stack.start_loader(settings))
        await api.sign_in()
        finished = await api.finished(stack.bucket, "m.bin")
        assert finished["state"] == "done", finished
        assert 0 < kept < len(big_part(stack, "m.bin"))
        assert cutting.cuts == 1
        registry = stack.runners[-1].app[SERVICES].metrics.registry
        assert registry.get_sample_value("edgeloader_cdn_read_retries_total") == 1
