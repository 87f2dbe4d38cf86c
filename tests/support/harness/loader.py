"""The loader, served in this process (``create_app``) or run as its own
process (``python -m edgeloader serve``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from edgeloader.config import Settings
from edgeloader.web import create_app
from edgeloader.web.server import start_loader
from tests.support.harness.net import LOOPBACK, free_port, wait_http
from tests.support.harness.processes import Child, clean_env, spawn


async def serve_loader(
    settings: Settings, *, fingerprint: str | None = None, host: str = LOOPBACK, port: int = 0
) -> tuple[web.AppRunner, str]:
    """The loader in this process, under its connection limits, as
    ``edgeloader serve`` runs it; ``fingerprint`` stands in for the device's."""
    runner = await start_loader(create_app(settings, fingerprint=fingerprint), settings, host, port)
    address = runner.addresses[0]
    return runner, f"http://{address[0]}:{address[1]}"


async def start_loader_process(
    api_url: str,
    state_dir: Path,
    logs: Path,
    cleanup: contextlib.ExitStack,
    *,
    log_level: str = "WARNING",
    launcher: Sequence[str] = (),
    **env: str,
) -> tuple[Child, str]:
    """``python -m edgeloader serve`` against ``api_url`` with ``state_dir``
    and the variables ``env`` (none of the caller's loader settings),
    started through ``launcher`` if given."""
    port = free_port()
    args = ["-m", "edgeloader", "serve", "--host", LOOPBACK, "--port", str(port)]
    args += ["--log-level", log_level]
    full_env = clean_env(RESOURCE_API_URL=api_url, EDGELOADER_STATE_DIR=str(state_dir), **env)
    child = spawn(f"loader-{port}", args, full_env, logs, cleanup, launcher)
    url = f"http://{LOOPBACK}:{port}"
    await wait_http(f"{url}/health", alive=child.check_alive)
    return child, url
