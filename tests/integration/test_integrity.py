"""Format v2 and the signed release manifest on the real stack: moto, the
reference Resource API, the loader and (for unlock) podman."""

# The unlock tests' fixtures are imported by name and requested as parameters.

from __future__ import annotations

import asyncio
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from edgeloader.services.manifest import ARCHIVE_KEY, Artifact
from edgeloader_publisher import cli as publisher_cli
from edgeloader_publisher.archive import encrypt_archive
from edgeloader_publisher.release import generate_keypair
from tests.support.harness.s3 import s3_client
from tests.support.podman import PodmanService, image_exists
from tests.support.releases import Publisher, artifact_of, cached_entries, publish_v2
from tests.support.stack import ADMIN, Stack, pattern
from tests.support.unlocks import (
    IMAGES,
    encrypted_archive,
    final_status,
    flip_byte,
    start_unlocker,
    unlock,
    unlock_outcome,
)

CHUNK = 1 << 16


# -- format v2 --------------------------------------------------------------------------

V2_SIZES = [0, 1, 15, 16, 60, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * 1024 * 1024 + 5]


@pytest.mark.parametrize("size", V2_SIZES, ids=[f"{s}B" for s in V2_SIZES])
async def test_v2_load_is_byte_identical_beside_v1(stack: Stack, size: int) -> None:
    data = pattern(size)
    publish_v2(stack, "new.bin", data)
    stack.publish("old.bin", data)
    await stack.login()
    assert await stack.load("new.bin") == (200, data)
    assert await stack.load("old.bin") == (200, data)
    # The second v2 load comes from the cache, verified chunk by chunk again.
    assert cached_entries(stack, "new.bin")
    assert await stack.load("new.bin") == (200, data)


async def test_v2_tampered_chunk_cuts_the_body_before_that_chunk(stack: Stack) -> None:
    data = pattern(16 * CHUNK)
    ct = publish_v2(stack, "t.bin", data)
    cut = min(3072, len(ct) * 3 // 10)
    big = bytearray(ct[cut:])
    tampered_chunk = 8
    flip_at = 32 + tampered_chunk * (CHUNK + 16) + 100 - cut
    big[flip_at] ^= 0x01
    s3_client(stack.s3_endpoint).put_object(Bucket=stack.bucket, Key="t.bin.big", Body=bytes(big))
    await stack.login()
    status, length, received, was_cut = await stack.load_until_cut("t.bin")
    assert status == 200
    assert length == len(data)
    assert was_cut
    assert len(received) <= tampered_chunk * CHUNK
    assert received == data[: len(received)]
    assert cached_entries(stack, "t.bin") == []


async def test_v2_archive_with_a_flipped_bit_loads_nothing(
    stack: Stack, clean_engine: PodmanService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive, fmt=2)
    flip_byte(archive, archive.stat().st_size // 2)
    status = await unlock_outcome(stack, clean_engine, archive)
    assert status["state"] == "error"
    assert status["error"] == "decryption failed"
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)


async def test_v1_archive_still_unlocks(
    stack: Stack, clean_engine: PodmanService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive, fmt=1)
    assert (await unlock_outcome(stack, clean_engine, archive))["state"] == "ready"


# -- the signed release manifest --------------------------------------------------------


async def test_a_good_manifest_passes(publisher: Publisher) -> None:
    stack = publisher.stack
    data = pattern(200_000)
    ct = publish_v2(stack, "m.bin", data)
    publisher.release(3, {f"{stack.bucket}/m.bin": artifact_of(ct)})
    await publisher.start_loader()
    assert await stack.load("m.bin") == (200, data)
    assert cached_entries(stack, "m.bin")
    assert await stack.load("m.bin") == (200, data)  # from the cache, checked again
    assert (stack.tmp / "state" / "release_floor").read_text().strip() == "3"


async def expect_refusal(stack: Stack, name: str, reason: str) -> None:
    """A 502 naming ``reason``, and the cache no different from before."""
    before = cached_entries(stack, name)
    async with stack.http.post(
        f"{stack.loader_url}/load/{name}", json={"folder": stack.bucket}
    ) as resp:
        assert resp.status == 502
        detail = (await resp.json())["detail"]
    assert detail.startswith(f"integrity: {reason}"), detail
    assert cached_entries(stack, name) == before


async def test_each_manifest_failure_is_refused_with_its_reason(
    publisher: Publisher, tmp_path: Path
) -> None:
    stack = publisher.stack
    ct = publish_v2(stack, "m.bin", pattern(100_000))
    good = artifact_of(ct)
    listed = f"{stack.bucket}/m.bin"
    await publisher.start_loader()

    await expect_refusal(stack, "m.bin", "unavailable")  # no manifest published yet
    assert cached_entries(stack, "m.bin") == []

    other, _ = generate_keypair(tmp_path / "someone-else")
    publisher.release(5, {listed: good}, sign_with=other)
    await expect_refusal(stack, "m.bin", "bad-signature")

    publisher.release(5, {listed: good}, expires_in=timedelta(seconds=-1))
    await expect_refusal(stack, "m.bin", "expired")

    publisher.release(5, {})
    await expect_refusal(stack, "m.bin", "not-listed")

    publisher.release(5, {listed: Artifact(good.sha256, good.size + 1, 2)})
    await expect_refusal(stack, "m.bin", "size")

    publisher.release(5, {listed: Artifact(good.sha256, good.size, 1)})
    await expect_refusal(stack, "m.bin", "format")

    publisher.release(4, {listed: good})
    await expect_refusal(stack, "m.bin", "rollback")  # 5 was accepted above

    publisher.release(5, {listed: good})
    assert (await stack.load("m.bin"))[0] == 200


async def test_the_version_floor_survives_a_restart(publisher: Publisher) -> None:
    stack = publisher.stack
    ct = publish_v2(stack, "m.bin", pattern(50_000))
    listed = f"{stack.bucket}/m.bin"
    publisher.release(9, {listed: artifact_of(ct)})
    await publisher.start_loader()
    assert (await stack.load("m.bin"))[0] == 200
    for runner in stack.runners:
        await runner.cleanup()
    stack.runners.clear()

    publisher.release(8, {listed: artifact_of(ct)})
    await publisher.start_loader()
    await expect_refusal(stack, "m.bin", "rollback")


async def test_a_wrong_hash_cuts_the_body_and_caches_nothing(publisher: Publisher) -> None:
    stack = publisher.stack
    data = pattern(300_000)
    ct = publish_v2(stack, "m.bin", data)
    wrong = Artifact("0" * 64, len(ct), 2)
    publisher.release(1, {f"{stack.bucket}/m.bin": wrong})
    await publisher.start_loader()
    status, length, received, was_cut = await stack.load_until_cut("m.bin")
    assert (status, length) == (200, len(data))
    assert was_cut
    assert len(received) < len(data)
    assert cached_entries(stack, "m.bin") == []


async def test_a_v1_resource_is_held_to_its_manifest_too(publisher: Publisher) -> None:
    stack = publisher.stack
    data = pattern(40_000)
    stack.publish("old.bin", data)
    small = (stack.api_dir / "resources" / stack.bucket / "old.bin.small").read_bytes()
    big = s3_client(stack.s3_endpoint).get_object(Bucket=stack.bucket, Key="old.bin.big")
    ct = small + big["Body"].read()
    publisher.release(1, {f"{stack.bucket}/old.bin": artifact_of(ct, fmt=1)})
    await publisher.start_loader()
    assert await stack.load("old.bin") == (200, data)


async def test_unlock_checks_the_archive_against_the_manifest(
    publisher: Publisher, clean_engine: PodmanService, plain_archive: Path
) -> None:
    stack = publisher.stack
    fragment = (stack.api_dir / "key_fragment").read_bytes()
    archive = stack.tmp / "images.enc"
    await encrypt_archive(plain_archive, archive, fragment)
    good = artifact_of(archive.read_bytes())
    publisher.release(1, {ARCHIVE_KEY: Artifact("f" * 64, good.size, 2)})
    await start_unlocker(stack, clean_engine, archive, publisher_key=publisher.public)
    await unlock(stack)
    status = await final_status(stack)
    assert status == {**status, "state": "error", "error": "integrity: hash"}
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)

    publisher.release(2, {ARCHIVE_KEY: good})
    await unlock(stack)
    assert (await final_status(stack))["state"] == "ready"


async def test_the_publisher_commands_make_a_release_boxes_accept(
    publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keygen, publish resource and publish manifest as an operator runs them."""
    stack = publisher.stack
    keys = tmp_path / "keys"
    assert await asyncio.to_thread(publisher_cli.main, ["publish", "keygen", "-o", str(keys)]) == 0
    assert stat.S_IMODE((keys / "publisher_key.pem").stat().st_mode) == 0o600
    assert await asyncio.to_thread(publisher_cli.main, ["publish", "keygen", "-o", str(keys)]) == 2

    model = tmp_path / "model.bin"
    model.write_bytes(pattern(150_000))
    monkeypatch.setenv("RESOURCE_API_URL", stack.api_url)
    monkeypatch.setenv("EDGELOADER_PUBLISH_EMAIL", ADMIN[0])
    monkeypatch.setenv("EDGELOADER_PUBLISH_PASSWORD", ADMIN[1])
    argv = ["publish", "resource", str(model), "--folder", stack.bucket]
    assert await asyncio.to_thread(publisher_cli.main, argv) == 0
    argv = ["publish", "manifest", "--key", str(keys / "publisher_key.pem"), "--version", "2"]
    argv += ["--resource", f"{stack.bucket}/model.bin", "--data-dir", str(stack.api_dir)]
    assert await asyncio.to_thread(publisher_cli.main, argv) == 0

    await stack.start_loader(stack.settings(publisher_key=keys / "publisher_key.pub.pem"))
    await stack.login()
    assert await stack.load("model.bin") == (200, model.read_bytes())
