"""A real stack per test: moto's S3 server, the reference Resource API and
the loader, all over HTTP on loopback; podman for the engine tests."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from edgeloader.config import Settings
from edgeloader.web import create_app
from edgeloader_publisher.resource_api.server import ResourceApiConfig, create_resource_api_app
from edgeloader_publisher.resource_api.users import UserStore
from tests.support import reference
from tests.support.podman import PodmanService

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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    with PodmanService(tmp_path_factory.mktemp("podman")) as service:
        yield service


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def dead_url() -> str:
    """An http URL on loopback where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


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
        runner, url = await start(create_app(settings or self.settings(), fingerprint=FINGERPRINT))
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


@pytest.fixture
async def make_stack(
    s3_endpoint: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    stacks: list[Stack] = []

    async def make(token_lifetime: float = 3600.0) -> Stack:
        api_dir = tmp_path / "api"
        api_dir.mkdir(exist_ok=True)
        users = UserStore(api_dir / "users.sqlite3")
        users.add_user(*ADMIN, role="Admin")
        users.add_user(*OPERATOR, role="Operator")
        users.close()
        (api_dir / "cdn.yaml").write_text(
            f"host: {s3_endpoint}\n" + "".join(f"{k}: {v}\n" for k, v in CDN_KEYS.items())
        )
        bucket = f"models-{secrets.token_hex(4)}"
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)
        jwt_secret = secrets.token_hex(32)
        config = ResourceApiConfig(
            data_dir=api_dir, jwt_secret=jwt_secret, token_lifetime=token_lifetime
        )
        runner, url = await start(create_resource_api_app(config))
        stack = Stack(
            s3_endpoint, api_dir, url, runner, aiohttp.ClientSession(), tmp_path, bucket, jwt_secret
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.http.close()
        for runner in stack.runners:
            await runner.cleanup()
        await stack.api_runner.cleanup()


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[Stack]]) -> Stack:
    stack = await make_stack()
    await stack.start_loader()
    return stack


def pattern(size: int) -> bytes:
    """Deterministic, non-repeating-looking test data of any size."""
    block = os.urandom(min(size, 1 << 20))
    reps, rest = divmod(size, len(block)) if block else (0, 0)
    return block * reps + block[:rest]


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
