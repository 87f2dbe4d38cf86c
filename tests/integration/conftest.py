"""Fixtures of the integration tests: one S3 server and one service of each
engine per session, a real stack per test (tests/support/stack.py), and a
loader with functions on the test engine (tests/support/functions.py)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker import DockerService
from tests.support.engines import (
    EngineKind,
    EngineService,
    import_busybox_image,
    remove_image,
    save_images,
)
from tests.support.functions import BASE_IMAGE, IMAGE, Api
from tests.support.harness.s3 import s3_server
from tests.support.podman import PodmanService
from tests.support.releases import Publisher
from tests.support.stack import ADMIN, OPERATOR, Stack, open_stack
from tests.support.unlocks import IMAGES

#: The engines every engine test runs on.
ENGINES: tuple[EngineKind, ...] = ("podman", "docker")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[EngineService]:
    """One service of each engine for the session, each in a short-pathed
    folder (podman's clean-up after a container refuses a run root over 50
    characters, and every wait then takes a 20 s fallback): every test
    that uses an engine runs on podman and on Docker Engine."""
    kind: EngineKind = request.param
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
    service: EngineService = PodmanService(folder) if kind == "podman" else DockerService(folder)
    with service:
        yield service


@pytest.fixture
async def make_stack(
    s3_endpoint: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    async with contextlib.AsyncExitStack() as stacks:

        async def make(token_lifetime: float = 3600.0) -> Stack:
            return await stacks.enter_async_context(
                open_stack(s3_endpoint, tmp_path, token_lifetime)
            )

        yield make


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[Stack]]) -> Stack:
    stack = await make_stack()
    await stack.start_loader()
    return stack


@pytest.fixture(scope="session")
def plain_archive(engine: EngineService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``docker save`` archive holding both service images."""
    for ref in IMAGES:
        import_busybox_image(engine, ref)
    return save_images(engine, IMAGES, tmp_path_factory.mktemp("images") / "images.tar")


@pytest.fixture
def clean_engine(engine: EngineService) -> Iterator[EngineService]:
    for ref in IMAGES:
        remove_image(engine, ref)
    yield engine
    for ref in IMAGES:
        remove_image(engine, ref)


@pytest.fixture
async def publisher(make_stack: Callable[..., Awaitable[Stack]], tmp_path: Path) -> Publisher:
    """A stack with a publisher's key pair, to sign release manifests."""
    stack = await make_stack()
    return Publisher(stack, tmp_path / "publisher-keys")


# Functions


@pytest.fixture(scope="session")
def image(engine: EngineService) -> str:
    import_busybox_image(engine, BASE_IMAGE)
    import_busybox_image(engine, IMAGE)
    return IMAGE


@pytest.fixture
async def make_api(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str
) -> Callable[..., Awaitable[Api]]:
    """A loader in the default auth mode on the test engine; ``functions``
    overrides the function settings."""

    async def make(**functions: Any) -> Api:
        stack = await make_stack()
        settings = stack.settings(auth_mode="required", docker_host=engine.docker_host)
        settings = settings.with_overrides(functions=replace(settings.functions, **functions))
        await stack.start_loader(settings)
        api = Api(stack.http, stack.loader_url)
        api.admin = await api.login(ADMIN)
        api.operator = await api.login(OPERATOR)
        return api

    return make


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[Api]]) -> Api:
    return await make_api()
