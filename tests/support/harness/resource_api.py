"""The reference Resource API: its users and ``cdn.yaml`` (written here and
nowhere else), served in this process or in one of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from aiohttp import web

from edgeloader.roles import Role
from edgeloader_publisher.resource_api.server import (
    CDN_FILE,
    USERS_FILE,
    ResourceApiConfig,
    create_resource_api_app,
)
from edgeloader_publisher.resource_api.users import UserStore
from tests.support.harness.net import LOOPBACK, free_port, serve, wait_http
from tests.support.harness.processes import Child, spawn
from tests.support.harness.s3 import ACCESS_KEY, SECRET_KEY


class User(NamedTuple):
    email: str
    password: str
    role: Role


def cdn_keys(key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict[str, str]:
    """``cdn.yaml``'s credentials, the same for downloading and uploading."""
    return {
        "downloader_access_key": key,
        "downloader_access_secret": secret,
        "uploader_access_key": key,
        "uploader_access_secret": secret,
    }


def write_users(data_dir: Path, users: Iterable[User]) -> None:
    """Adds ``users`` to the API's store (replacing the password and role of
    an existing one). Slow on purpose: scrypt."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with UserStore(data_dir / USERS_FILE) as store:
        for user in users:
            store.add_user(user.email, user.password, user.role)


def write_cdn_yaml(data_dir: Path, s3_url: str, keys: Mapping[str, str]) -> None:
    """``cdn.yaml``: the CDN's address and ``keys`` (see :func:`cdn_keys`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"host: {s3_url}", *(f"{name}: {value}" for name, value in keys.items())]
    (data_dir / CDN_FILE).write_text("".join(f"{line}\n" for line in lines))


def write_api_data(
    data_dir: Path, s3_url: str, users: Iterable[User], keys: Mapping[str, str] | None = None
) -> None:
    """Everything the API needs in ``data_dir`` besides what it makes itself."""
    write_users(data_dir, users)
    write_cdn_yaml(data_dir, s3_url, cdn_keys() if keys is None else keys)


async def serve_resource_api(
    config: ResourceApiConfig, host: str = LOOPBACK, port: int = 0
) -> tuple[web.AppRunner, str]:
    """The API in this process; the caller cleans the runner up."""
    return await serve(create_resource_api_app(config), host, port)


async def start_resource_api_process(
    data_dir: Path, env: dict[str, str], logs: Path, cleanup: contextlib.ExitStack
) -> tuple[Child, str]:
    """``python -m edgeloader_publisher resource-api`` on ``data_dir``: the
    JWT secret is made and kept there."""
    port = free_port()
    args = ["-m", "edgeloader_publisher", "resource-api", "--port", str(port)]
    args += ["--data-dir", str(data_dir)]
    child = spawn("resource-api", args, env, logs, cleanup)
    url = f"http://{LOOPBACK}:{port}"
    await wait_http(url, alive=child.check_alive)
    return child, url
