"""Unlock against each engine (podman and Docker Engine, one service each
per session) and the engine's image load it uses."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeloader.errors import EngineError
from edgeloader.roles import Role
from edgeloader.storage.files import read_file_chunks
from edgeloader.upstream.engine import Engine
from edgeloader.web.state import SERVICES
from edgeloader_publisher.archive import encrypt_archive
from tests.support.engines import (
    EngineService,
    image_exists,
)
from tests.support.stack import ADMIN, Stack
from tests.support.unlocks import (
    CREDS,
    IMAGES,
    REPOS,
    encrypted_archive,
    final_status,
    flip_byte,
    start_unlocker,
    unlock,
    unlock_outcome,
)


async def test_unlock_loads_every_expected_image(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    await start_unlocker(stack, clean_engine, archive)
    first = await unlock(stack)
    assert first["state"] == "authenticating"
    status = await final_status(stack)
    assert status == {
        "state": "ready",
        "error": None,
        "bytesDone": archive.stat().st_size,
        "bytesTotal": archive.stat().st_size,
        "images": status["images"],
    }
    assert sorted(status["images"]) == sorted(IMAGES)  # named as the engine loaded them
    for ref in IMAGES:
        assert image_exists(clean_engine, ref)


async def test_already_loaded_is_ready_at_once(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    await start_unlocker(stack, clean_engine, archive)
    await unlock(stack)
    assert (await final_status(stack))["state"] == "ready"
    await start_unlocker(stack, clean_engine, archive)
    assert await unlock(stack) == {"state": "ready"}
    assert (await final_status(stack))["images"] == list(IMAGES)  # found in the engine


async def test_concurrent_unlocks_start_one_run(
    stack: Stack,
    clean_engine: EngineService,
    plain_archive: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    await start_unlocker(stack, clean_engine, archive)
    with caplog.at_level(logging.INFO, logger="edgeloader.services.unlock"):
        answers = await asyncio.gather(*(unlock(stack) for _ in range(5)))
        assert all(a["state"] != "error" for a in answers)
        assert (await final_status(stack))["state"] == "ready"
    runs = [r for r in caplog.records if r.getMessage() == "unlock: downloading_key"]
    assert len(runs) == 1


async def test_missing_archive_is_404(stack: Stack, clean_engine: EngineService) -> None:
    await start_unlocker(stack, clean_engine, stack.tmp / "absent.enc")
    async with stack.http.post(f"{stack.loader_url}/unlock", json=CREDS) as resp:
        assert resp.status == 404
        assert "archive not found" in (await resp.json())["detail"]


async def test_corrupted_archive_ends_in_error_and_loads_nothing(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    flip_byte(archive, -1)  # the final chunk's tag no longer verifies
    status = await unlock_outcome(stack, clean_engine, archive)
    assert status["state"] == "error"
    assert status["error"] == "decryption failed"
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)


async def test_a_failed_run_is_over_when_its_status_says_so(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    """A failed load is cleaned out of the engine before "error" goes out:
    a caller who sees it and retries at once starts a new run rather than
    being answered with the old one's state."""
    archive = await encrypted_archive(stack, plain_archive)
    flip_byte(archive, -1)
    await start_unlocker(stack, clean_engine, archive)
    manager = stack.runners[-1].app[SERVICES].unlock
    with manager.events.subscribe(Role.ADMIN, "admin") as seen:  # type: ignore[union-attr]
        await unlock(stack)
        while (event := await seen.next(within=120)) is not None:
            if event.data["state"] in ("ready", "error"):
                break
        assert event is not None, "the unlock did not end"
        assert event.data["error"] == "decryption failed", event
        # The subscriber wakes a loop step after the publish, as any client.
        assert not manager.running
    retry = await unlock(stack)
    assert retry["state"] == "authenticating", retry
    assert (await final_status(stack))["error"] == "decryption failed"


async def test_wrong_fragment_ends_in_error(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    out = stack.tmp / "images.enc"
    await encrypt_archive(plain_archive, out, b"some other fragment")
    await start_unlocker(stack, clean_engine, out)
    await unlock(stack)
    status = await final_status(stack)
    assert status["state"] == "error"
    # A wrong key fails v2's first tag; a v1 archive would fail its padding
    # check except about once in 256 runs, and the engine refuse the garbage.
    error = status["error"]
    assert error == "decryption failed" or error.startswith("image load failed"), error


async def test_engine_down_ends_in_error_with_a_clear_message(
    stack: Stack, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    socket = stack.tmp / "no-engine.sock"
    await stack.start_loader(
        stack.settings(images_path=archive, api_services=REPOS, docker_host=f"unix://{socket}")
    )
    await unlock(stack)
    status = await final_status(stack)
    assert status["state"] == "error"
    assert status["error"].startswith(f"container engine unreachable at unix://{socket}")


async def test_bad_credentials_end_in_error(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    await start_unlocker(stack, clean_engine, archive)
    async with stack.http.post(
        f"{stack.loader_url}/unlock", json={"email": ADMIN[0], "password": "nope"}
    ) as resp:
        assert resp.status == 200
    status = await final_status(stack)
    assert status == {
        "state": "error",
        "error": "invalid email or password",
        "bytesDone": 0,
        "bytesTotal": archive.stat().st_size,
        "images": [],
    }


async def test_unlock_writes_no_file_under_tmpdir(
    stack: Stack,
    clean_engine: EngineService,
    plain_archive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watched = tmp_path / "tmpdir"
    watched.mkdir()
    monkeypatch.setenv("TMPDIR", str(watched))
    monkeypatch.setattr(tempfile, "tempdir", str(watched))
    archive = await encrypted_archive(stack, plain_archive)
    await start_unlocker(stack, clean_engine, archive)
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            for root, dirs, files in os.walk(watched):
                seen.update(os.path.join(root, n) for n in dirs + files)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await unlock(stack)
        assert (await final_status(stack))["state"] == "ready"
    finally:
        watcher.cancel()
    assert seen == set()


# -- the engine's image loads --------------------------------------------------


async def chunks_of(path: Path) -> AsyncIterator[bytes]:
    """The file in small pieces, so that a load streams several."""
    async for chunk in read_file_chunks(path, 64 * 1024):
        yield chunk


async def garbage() -> AsyncIterator[bytes]:
    for _ in range(16):
        yield os.urandom(64 * 1024)


async def test_the_engine_is_detected_once_with_its_version(engine: EngineService) -> None:
    client = Engine(engine.docker_host)
    try:
        described = await client.describe()
        assert await client.backend() is await client.backend()
    finally:
        await client.close()
    name = {"podman": "podman ", "docker": "Docker Engine "}[engine.kind]
    assert described.startswith(name), described


async def test_the_engine_loads_every_image(
    clean_engine: EngineService, plain_archive: Path
) -> None:
    client = Engine(clean_engine.docker_host)
    try:
        messages = await client.load(chunks_of(plain_archive))
    finally:
        await client.close()
    assert any(line.startswith("Loaded image") for line in messages), messages
    for ref in IMAGES:
        assert image_exists(clean_engine, ref)


# Each engine's own words for an archive that is not one.
NOT_AN_ARCHIVE = {
    "podman": "does not match any of the supported image formats",
    "docker": "Error processing tar file",
}


async def test_a_refused_load_is_one_clear_error_on_every_engine(
    clean_engine: EngineService,
) -> None:
    """podman refuses with an HTTP error, Docker inside a 200 stream: both
    become ``image load failed: <the engine's reason>``."""
    client = Engine(clean_engine.docker_host)
    try:
        with pytest.raises(EngineError, match=r"^image load failed: ") as refused:
            await client.load(garbage())
    finally:
        await client.close()
    assert NOT_AN_ARCHIVE[clean_engine.kind] in refused.value.detail
    # The engine's spool files are not the caller's business (nor the box's layout).
    assert "/tmp" not in refused.value.detail, refused.value.detail
    assert "/var/" not in refused.value.detail, refused.value.detail
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)


# -- the engine vanishing mid-load ------------------------------------------------


class EngineCutter:
    """The engine's unix socket behind a TCP port. The first connection that
    sends more than ``after`` bytes up is closed both ways at that point, as
    an engine that dies mid-load; every other connection passes."""

    def __init__(self, socket: Path, after: int) -> None:
        self.socket = socket
        self.after = after
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> EngineCutter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket)

        async def up() -> None:
            sent = 0
            while data := await reader.read(64 * 1024):
                sent += len(data)
                if self.cuts == 0 and sent > self.after:
                    self.cuts += 1
                    return
                up_writer.write(data)
                await up_writer.drain()

        async def down() -> None:
            while data := await up_reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()

        pipes = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for w in (writer, up_writer):
                w.transport.abort()


async def test_an_engine_that_vanishes_mid_load_leaves_nothing_and_a_retry_loads(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive)
    after = archive.stat().st_size // 2
    async with EngineCutter(clean_engine.socket_path, after) as cutter:
        settings = stack.settings(
            images_path=archive,
            api_services=REPOS,
            docker_host=f"tcp://127.0.0.1:{cutter.port}",
        )
        await stack.start_loader(settings)
        await unlock(stack)
        status = await final_status(stack)
        assert cutter.cuts == 1
        assert status["state"] == "error"
        assert status["error"].startswith(("container engine", "image load failed")), status
        assert "unexpected" not in status["error"]
        for ref in IMAGES:
            assert not image_exists(clean_engine, ref)

        retry = await unlock(stack)
        assert retry["state"] == "authenticating"
        status = await final_status(stack)
        assert status == {
            "state": "ready",
            "error": None,
            "bytesDone": archive.stat().st_size,
            "bytesTotal": archive.stat().st_size,
            "images": status["images"],
        }
        assert sorted(status["images"]) == sorted(IMAGES)
