"""Unlocks on the test stack: the service images, the archive, and the
calls that start an unlock and wait for its end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edgeloader_publisher.archive import encrypt_archive
from tests.support.engines import EngineService
from tests.support.stack import ADMIN, Stack

__all__ = [
    "CREDS",
    "IMAGES",
    "REPOS",
    "encrypted_archive",
    "final_status",
    "flip_byte",
    "start_unlocker",
    "unlock",
    "unlock_outcome",
]

#: The repositories of the service images (``EDGELOADER_API_SERVICES``).
REPOS = ("localhost/edgeloader-svc-a", "localhost/edgeloader-svc-b")
IMAGES = tuple(f"{repo}:latest" for repo in REPOS)
CREDS = {"email": ADMIN[0], "password": ADMIN[1]}


async def encrypted_archive(stack: Stack, plain: Path, fmt: int = 2) -> Path:
    """``images.enc`` under the stack's key fragment, v2 (the publisher's
    default) unless ``fmt`` says 1."""
    fragment = (stack.api_dir / "key_fragment").read_bytes()
    out = stack.tmp / "images.enc"
    await encrypt_archive(plain, out, fragment, fmt=fmt)
    return out


def flip_byte(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x42
    path.write_bytes(bytes(data))


async def unlock_outcome(stack: Stack, engine: EngineService, archive: Path) -> dict[str, Any]:
    """Starts a loader on ``archive``, unlocks, and waits for the end state."""
    await start_unlocker(stack, engine, archive)
    await unlock(stack)
    return await final_status(stack)


async def start_unlocker(stack: Stack, engine: EngineService, archive: Path, **extra: Any) -> None:
    settings = stack.settings(
        images_path=archive,
        api_services=REPOS,
        docker_host=engine.docker_host,
        **extra,
    )
    await stack.start_loader(settings)


async def unlock(stack: Stack) -> dict[str, Any]:
    async with stack.http.post(f"{stack.loader_url}/unlock", json=CREDS) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def final_status(stack: Stack, within: float = 120) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        async with stack.http.get(f"{stack.loader_url}/unlock/status") as resp:
            status: dict[str, Any] = await resp.json()
        if status["state"] in ("ready", "error"):
            return status
        assert loop.time() < deadline, f"unlock did not finish: {status}"
        await asyncio.sleep(0.05)
