"""The real stack the integration tests run on: moto's S3 server, the
reference Resource API and the loader, all over HTTP on loopback (the
components come from the harness, tests/support/harness)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edgeloader.config import CdnOverrides, Settings
from edgeloader.roles import Role
from edgeloader_publisher.resource_api.server import ResourceApiConfig
from tests.support import reference
from tests.support.harness.loader import serve_loader
from tests.support.harness.net import dead_url
from tests.support.harness.resource_api import User, serve_resource_api, write_api_data
from tests.support.harness.s3 import create_bucket, s3_client

__all__ = [
    "ADMIN",
    "BUCKET",
    "CDN_KEYS",
    "FINGERPRINT",
    "OPERATOR",
    "Stack",
    "dead_cdn",
    "open_stack",
    "pattern",
]

ADMIN = ("admin@example.org", "admin-password-1")
OPERATOR = ("operator@example.org", "operator-password-1")
FINGERPRINT = "CPU: Test CPU. GPU: unknown. Memory: 2048 MB. DriveSerial: TEST-1"
CDN_KEYS = {
    "downloader_access_key": "dl-key",
    "downloader_access_secret": "dl-secret",
    "uploader_access_key": "up-key",
    "uploader_access_secret": "up-secret",
}
BUCKET = "models"


@dataclass
class Stack:
    s3_endpoint: str
    api_dir: Path
    api_url: str
    api_runner: web.AppRunner
    http: aiohttp.ClientSession
    tmp: Path
    bucket: str
    jwt_secret: str = ""
    runners: list[web.AppRunner] = field(default_factory=list)
    loader_url: str = ""

    def publish(self, name: str, plaintext: bytes, folder: str | None = None) -> None:
        """Publishes with the reference implementation: big part straight
        to S3, small part into the API's store."""
        folder = folder or self.bucket
        small, big = reference.split_resource(plaintext)
        s3_client(self.s3_endpoint).put_object(Bucket=folder, Key=f"{name}.big", Body=big)
        path = self.api_dir / "resources" / folder / f"{name}.small"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(small)

    def settings(self, **overrides: Any) -> Settings:
        # The Azaion-route tests run in compat mode; tests/integration/test_auth.py
        # covers the default, `required`.
        env = {
            "RESOURCE_API_URL": self.api_url,
            "EDGELOADER_CACHE_DIR": str(self.tmp / "cache"),
            "EDGELOADER_STATE_DIR": str(self.tmp / "state"),
            "EDGELOADER_AUTH": "compat",
        }
        return Settings.from_env(env).with_overrides(**overrides)

    async def start_loader(self, settings: Settings | None = None) -> str:
        runner, url = await serve_loader(settings or self.settings(), fingerprint=FINGERPRINT)
        self.runners.append(runner)
        self.loader_url = url
        return url

    async def login(self, creds: tuple[str, str] = ADMIN, url: str | None = None) -> None:
        async with self.http.post(
            f"{url or self.loader_url}/login", json={"email": creds[0], "password": creds[1]}
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def load(self, name: str, folder: str | None = None) -> tuple[int, bytes]:
        body = {"filename": name, "folder": folder or self.bucket}
        async with self.http.post(f"{self.loader_url}/load/{name}", json=body) as resp:
            return resp.status, await resp.read()

    async def load_until_cut(self, name: str) -> tuple[int, int | None, bytes, bool]:
        """(status, Content-Length, the bytes received, whether the body was cut)."""
        received = bytearray()
        body = {"folder": self.bucket}
        async with self.http.post(f"{self.loader_url}/load/{name}", json=body) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    received += chunk
            except aiohttp.ClientPayloadError:
                return resp.status, resp.content_length, bytes(received), True
            return resp.status, resp.content_length, bytes(received), False


@asynccontextmanager
async def open_stack(
    s3_endpoint: str, tmp_path: Path, token_lifetime: float = 3600.0
) -> AsyncIterator[Stack]:
    """A Resource API with an Admin and an Operator, a bucket of its own on
    ``s3_endpoint``, and no loader yet (``Stack.start_loader``)."""
    api_dir = tmp_path / "api"
    users = [User(*ADMIN, Role.ADMIN), User(*OPERATOR, Role.OPERATOR)]
    write_api_data(api_dir, s3_endpoint, users, CDN_KEYS)
    bucket = f"models-{secrets.token_hex(4)}"
    create_bucket(s3_endpoint, bucket)
    jwt_secret = secrets.token_hex(32)
    config = ResourceApiConfig(
        data_dir=api_dir, jwt_secret=jwt_secret, token_lifetime=token_lifetime
    )
    runner, url = await serve_resource_api(config)
    stack = Stack(
        s3_endpoint, api_dir, url, runner, aiohttp.ClientSession(), tmp_path, bucket, jwt_secret
    )
    try:
        yield stack
    finally:
        await stack.http.close()
        for loader in stack.runners:
            await loader.cleanup()
        await stack.api_runner.cleanup()


def dead_cdn() -> CdnOverrides:
    """A CDN address where nothing answers."""
    return CdnOverrides(host=dead_url())


def pattern(size: int) -> bytes:
    """Deterministic, non-repeating-looking test data of any size."""
    block = os.urandom(min(size, 1 << 20))
    reps, rest = divmod(size, len(block)) if block else (0, 0)
    return block * reps + block[:rest]
