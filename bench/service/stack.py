"""The components the benchmarks measure, each in its own process (from
tests/support/harness): moto, s3s-fs, the reference Resource API, loaders."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.harness.loader import start_loader_process
from tests.support.harness.processes import Child, clean_env
from tests.support.harness.resource_api import User, start_resource_api_process, write_api_data
from tests.support.harness.s3 import create_bucket, start_s3_process

from bench.service import BenchError
from bench.service.s3s import start_s3s_fs
from edgeloader.roles import Role

EMAIL, PASSWORD = "bench@example.org", "bench-password-1"
FOLDER = "bench"
MOTO, S3S_FS = "moto", "s3s-fs"


@dataclass
class Upstream:
    s3_url: str  # moto's, the one cdn.yaml names
    api_url: str
    api_dir: Path
    moto: Child
    work: Path
    # Every S3 server with the bucket FOLDER, by name: its process and URL.
    # A loader reads from another one than cdn.yaml's via EDGELOADER_CDN_HOST.
    servers: dict[str, tuple[Child, str]]
    # Settings for every loader started here (--loader-env), e.g. a budget.
    loader_env: dict[str, str] = field(default_factory=dict)
    # What the signed release of the run lists so far (bench/service/signed.py).
    released: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.work / "logs"


async def start_upstream(
    work: Path, cleanup: contextlib.ExitStack, s3s_fs: Path | None = None
) -> Upstream:
    """moto with the bucket ``FOLDER``, then the Resource API with one admin;
    and s3s-fs (the binary ``s3s_fs``) with the same bucket, if given."""
    logs = work / "logs"
    # moto spools big objects to temp files: keep them in the work folder.
    env = clean_env(TMPDIR=str(work / "tmp"))
    moto, s3_url = await start_s3_process(env, logs, cleanup)
    await asyncio.to_thread(create_bucket, s3_url, FOLDER)
    api_dir = work / "api"
    users = [User(EMAIL, PASSWORD, Role.ADMIN)]
    await asyncio.to_thread(write_api_data, api_dir, s3_url, users)
    _, api_url = await start_resource_api_process(api_dir, env, logs, cleanup)
    servers = {MOTO: (moto, s3_url)}
    if s3s_fs is not None:
        servers[S3S_FS] = await start_s3s_fs(s3s_fs, work / "s3s-fs", FOLDER, logs, cleanup)
    return Upstream(s3_url, api_url, api_dir, moto, work, servers)


async def start_loader(
    upstream: Upstream, cleanup: contextlib.ExitStack, name: str, **env: str
) -> tuple[Child, str]:
    """``python -m edgeloader serve`` without a model cache, in the default
    auth mode (agents need a bearer token), with a fresh state folder."""
    state = upstream.work / f"loader-state-{name}"
    env = upstream.loader_env | env
    return await start_loader_process(upstream.api_url, state, upstream.logs, cleanup, **env)


async def login(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """POST /login (the device logs in upstream); the caller's bearer header."""
    async with http.post(f"{url}/login", json={"email": EMAIL, "password": PASSWORD}) as resp:
        if resp.status != 200:
            raise BenchError(f"loader /login: HTTP {resp.status}: {await resp.text()}")
        answer = await resp.json()
    token = answer.get("accessToken")
    return {"Authorization": f"Bearer {token}"} if token else {}
