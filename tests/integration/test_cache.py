"""The model cache on the real stack: what it serves, when the CDN is down
or the resource was republished, and what it does with a damaged entry, a
left-over partial file or a symbolic link."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.harness.net import wait_for
from tests.support.stack import Stack, dead_cdn, pattern

SIZES = [0, 1, 15, 16, 17, 3072, 10 * 1024, 50 * 1024 * 1024]


async def test_cache_serves_when_the_cdn_is_down(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack()
    data = pattern(3 * 1024 * 1024 + 5)
    stack.publish("cached.bin", data)
    await stack.start_loader()
    await stack.login()
    assert await stack.load("cached.bin") == (200, data)
    entry_dir = stack.tmp / "cache" / stack.bucket / "cached.bin"

    async def committed() -> bool:  # the commit may land just after the last byte
        return [p.suffix for p in entry_dir.iterdir()] == [".big"]

    await wait_for(committed, within=10)
    entries = list(entry_dir.iterdir())
    # The cache holds ciphertext only, in folders as private as the state's.
    assert data[:4096] not in entries[0].read_bytes()
    cache = stack.tmp / "cache"
    for folder in (cache, cache / stack.bucket, entry_dir):
        assert folder.stat().st_mode & 0o777 == 0o700, folder

    down = stack.settings().with_overrides(cdn=dead_cdn())
    await stack.start_loader(down)
    await stack.login()
    assert await stack.load("cached.bin") == (200, data)


async def test_republished_resource_is_not_served_from_a_stale_cache(stack: Stack) -> None:
    stack.publish("m.bin", b"first version " * 1000)
    await stack.login()
    assert (await stack.load("m.bin"))[1] == b"first version " * 1000
    stack.publish("m.bin", b"second version " * 1000)
    assert (await stack.load("m.bin"))[1] == b"second version " * 1000
    entry_dir = stack.tmp / "cache" / stack.bucket / "m.bin"

    async def one_entry() -> bool:
        return [p.suffix for p in entry_dir.iterdir()] == [".big"]

    await wait_for(one_entry, within=10)


# -- damaged entries and unsafe folders ----------------------------------------------


def entry_of(stack: Stack, name: str) -> Path:
    entries = [p for p in (stack.tmp / "cache" / stack.bucket / name).iterdir()]
    assert len(entries) == 1, entries
    return entries[0]


async def cached(stack: Stack, name: str, data: bytes) -> Path:
    stack.publish(name, data)
    await stack.login()
    assert await stack.load(name) == (200, data)
    folder = stack.tmp / "cache" / stack.bucket / name

    async def committed() -> bool:
        return [p.suffix for p in folder.iterdir()] == [".big"]

    await wait_for(committed, within=10)
    return entry_of(stack, name)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def folder_in_its_place(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inner").write_bytes(b"x")


@pytest.mark.parametrize("damage", [flip_last_byte, truncate, empty, folder_in_its_place])
async def test_a_damaged_cache_entry_is_dropped_and_the_cdn_serves(
    stack: Stack, damage: Callable[[Path], None]
) -> None:
    data = pattern(300_000)
    entry = await cached(stack, "m.bin", data)
    damage(entry)
    assert await stack.load("m.bin") == (200, data)
    assert await stack.load("m.bin") == (200, data)


async def test_a_byte_flipped_in_the_middle_of_an_entry_is_never_served_whole(
    stack: Stack,
) -> None:
    data = pattern(3 * 1024 * 1024)
    entry = await cached(stack, "m.bin", data)
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    entry.write_bytes(bytes(raw))
    status, length, received, was_cut = await stack.load_until_cut("m.bin")
    assert (status, length, was_cut) == (200, len(data), True)
    assert len(received) < len(data)
    # The entry was dropped: the next load comes from the CDN, whole.
    assert await stack.load("m.bin") == (200, data)


async def test_partial_files_are_removed_at_start(stack: Stack) -> None:
    folder = stack.tmp / "cache" / stack.bucket / "m.bin"
    folder.mkdir(parents=True)
    leftover = folder / ".abc.big.1234abcd.partial"
    leftover.write_bytes(b"half a download")
    await stack.start_loader()
    assert not leftover.exists()


async def test_a_symlinked_cache_folder_is_never_followed(stack: Stack, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "m.bin").mkdir(parents=True)
    precious = victim / "m.bin" / ("a" * 32 + "-" + "b" * 64 + ".big")
    precious.write_bytes(b"someone else's file")
    (stack.tmp / "cache").mkdir(exist_ok=True)
    (stack.tmp / "cache" / stack.bucket).symlink_to(victim)
    data = pattern(50_000)
    stack.publish("m.bin", data)
    await stack.login()
    assert await stack.load("m.bin") == (200, data)
    assert await stack.load("m.bin") == (200, data)
    assert precious.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in (victim / "m.bin").iterdir()) == [precious.name]


async def test_clients_that_vanish_mid_load_leave_the_entry_writable(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    """One load writes an entry at a time: ten clients that leave halfway
    through (all at once) must each let go of it, so that the next whole
    load writes it and the one after is served from the cache."""
    stack = await make_stack()
    data = pattern(6 * 1024 * 1024)
    stack.publish("m.bin", data)
    await stack.start_loader()
    await stack.login()
    entry_dir = stack.tmp / "cache" / stack.bucket / "m.bin"

    async def leave_halfway() -> None:
        body = {"folder": stack.bucket}
        async with stack.http.post(f"{stack.loader_url}/load/m.bin", json=body) as resp:
            assert resp.status == 200
            await resp.content.readexactly(len(data) // 2)
            resp.close()  # the connection goes, mid-body

    await asyncio.gather(*(leave_halfway() for _ in range(10)))

    async def no_entry_is_being_written() -> bool:
        return not entry_dir.exists() or not any(entry_dir.iterdir())

    # Nothing half-written stays behind once the loads have ended.
    await wait_for(no_entry_is_being_written, within=10)
    assert await stack.load("m.bin") == (200, data)

    async def committed() -> bool:
        return [p.suffix for p in entry_dir.iterdir()] == [".big"]

    await wait_for(committed, within=10)
    down = stack.settings().with_overrides(cdn=dead_cdn())
    await stack.start_loader(down)
    await stack.login()
    assert await stack.load("m.bin") == (200, data)
