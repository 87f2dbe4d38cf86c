"""Format v2, the signed release manifest and its segment lists on the real
stack: moto, the reference Resource API, the loader and (for unlock)
podman. Forgeries are built here with `cryptography` (AES-GCM and HKDF for
v2, AES-CBC for v1), never with the core."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import stat
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from edgeloader.config import DownloadSettings
from edgeloader.errors import IntegrityError
from edgeloader.services.manifest import ARCHIVE_KEY, parse_manifest
from edgeloader.web.state import SERVICES
from edgeloader_publisher import cli as publisher_cli
from edgeloader_publisher.release import generate_keypair
from tests.support.engines import EngineService, image_exists
from tests.support.harness.loader import start_loader_process
from tests.support.harness.s3 import s3_client
from tests.support.reference import oracle_encrypt, segment_list
from tests.support.releases import (
    SEGMENT,
    Publisher,
    artifact_of,
    cached_entries,
    forge_v1,
    forge_v2,
    publish_segments,
    publish_v2,
    read_ciphertext,
)
from tests.support.stack import ADMIN, Stack, pattern
from tests.support.unlocks import (
    IMAGES,
    REPOS,
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
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive, fmt=2)
    flip_byte(archive, archive.stat().st_size // 2)
    status = await unlock_outcome(stack, clean_engine, archive)
    assert status["state"] == "error"
    assert status["error"] == "decryption failed"
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)


async def test_v1_archive_still_unlocks(
    stack: Stack, clean_engine: EngineService, plain_archive: Path
) -> None:
    archive = await encrypted_archive(stack, plain_archive, fmt=1)
    assert (await unlock_outcome(stack, clean_engine, archive))["state"] == "ready"


# -- the signed release manifest --------------------------------------------------------


def release_resource(publisher: Publisher, name: str, ct: bytes, fmt: int = 2) -> None:
    """Publishes the segment list of ``ct`` and a manifest listing it."""
    stack = publisher.stack
    publish_segments(stack, name, ct)
    publisher.release(3, {f"{stack.bucket}/{name}": artifact_of(ct, fmt)})


async def test_a_good_manifest_passes(publisher: Publisher) -> None:
    stack = publisher.stack
    data = pattern(200_000)
    ct = publish_v2(stack, "m.bin", data)
    release_resource(publisher, "m.bin", ct)
    await publisher.start_loader()
    assert await stack.load("m.bin") == (200, data)
    [entry] = cached_entries(stack, "m.bin")
    # Named by the release's identity, not by a hash computed again.
    assert entry.name.endswith(f"-r{artifact_of(ct).sha256}.big")
    assert await stack.load("m.bin") == (200, data)  # from the cache, verified again
    assert (stack.tmp / "state" / "release_floor").read_text().strip() == "3"


async def expect_refusal(stack: Stack, name: str, reason: str) -> str:
    """A 502 naming ``reason`` before any byte, and the cache no different."""
    before = cached_entries(stack, name)
    async with stack.http.post(
        f"{stack.loader_url}/load/{name}", json={"folder": stack.bucket}
    ) as resp:
        assert resp.status == 502
        detail: str = (await resp.json())["detail"]
    assert detail.startswith(f"integrity: {reason}"), detail
    assert cached_entries(stack, name) == before
    return detail


def failures(stack: Stack, reason: str) -> float:
    registry = stack.runners[-1].app[SERVICES].metrics.registry
    found = registry.get_sample_value("edgeloader_integrity_failures_total", {"reason": reason})
    return found or 0.0


async def test_each_manifest_failure_is_refused_with_its_reason(
    publisher: Publisher, tmp_path: Path
) -> None:
    stack = publisher.stack
    ct = publish_v2(stack, "m.bin", pattern(100_000))
    publish_segments(stack, "m.bin", ct)
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

    publisher.release(5, {listed: replace(good, size=good.size + 1)})
    await expect_refusal(stack, "m.bin", "size")

    publisher.release(5, {listed: replace(good, size=good.size + SEGMENT)})
    await expect_refusal(stack, "m.bin", "segments")  # the list is one segment short

    publisher.release(5, {listed: replace(good, format=1)})
    await expect_refusal(stack, "m.bin", "format")

    publisher.release(4, {listed: good})
    await expect_refusal(stack, "m.bin", "rollback")  # 5 was accepted above

    publisher.release(5, {listed: good})
    assert (await stack.load("m.bin"))[0] == 200
    for reason in ("unavailable", "bad-signature", "expired", "not-listed", "size", "format"):
        assert failures(stack, reason) == 1, reason


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("missing", "m.bin.segments is missing upstream"),
        ("short", "the list has"),
        ("long", "the list has"),
        ("another", "the list does not match the manifest"),
    ],
)
async def test_a_bad_segment_list_is_refused_before_any_byte(
    publisher: Publisher, case: str, detail: str
) -> None:
    stack = publisher.stack
    data = pattern(5 * SEGMENT + 77)
    ct = publish_v2(stack, "m.bin", data)
    listed = publish_segments(stack, "m.bin", ct)
    publisher.release(1, {f"{stack.bucket}/m.bin": artifact_of(ct)})
    path = stack.api_dir / "resources" / stack.bucket / "m.bin.segments"
    if case == "missing":
        path.unlink()
    elif case == "short":
        path.write_bytes(listed[:-32])
    elif case == "long":
        path.write_bytes(listed + listed[:32])
    else:  # the right length, another content (another ciphertext's list)
        path.write_bytes(segment_list(pattern(len(ct)), SEGMENT))
    await publisher.start_loader()
    found = await expect_refusal(stack, "m.bin", "segments")
    assert detail in found, found
    assert failures(stack, "segments") == 1
    assert cached_entries(stack, "m.bin") == []


async def test_a_device_not_logged_in_is_told_so_not_a_manifest_fault(
    publisher: Publisher,
) -> None:
    stack = publisher.stack
    await stack.start_loader(stack.settings(publisher_key=publisher.public))
    status, body = await stack.load("m.bin")
    assert (status, json.loads(body)) == (401, {"detail": "not logged in: POST /login first"})


def test_a_manifest_without_segment_lists_is_malformed() -> None:
    doc = {
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "artifacts": {"models/m": {"sha256": "a" * 64, "size": 10, "format": 2}},
    }
    with pytest.raises(IntegrityError, match=r"malformed manifest: .*segment and segments"):
        parse_manifest(json.dumps(doc).encode())
    entry = doc["artifacts"]["models/m"]  # type: ignore[index]
    for bad in (
        {"segment": 1000, "segments": "a" * 64},
        {"segment": 1 << 25, "segments": "a" * 64},
    ):
        entry.update(bad)
        with pytest.raises(IntegrityError, match="power of two"):
            parse_manifest(json.dumps(doc).encode())
    entry.update({"segment": 1 << 20, "segments": "A" * 64})
    with pytest.raises(IntegrityError, match="64 lowercase hex"):
        parse_manifest(json.dumps(doc).encode())


async def test_the_version_floor_survives_a_restart(publisher: Publisher) -> None:
    stack = publisher.stack
    ct = publish_v2(stack, "m.bin", pattern(50_000))
    publish_segments(stack, "m.bin", ct)
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


# -- forgeries: what a party that controls the CDN or the box's disk can do ------------


def put_big(stack: Stack, name: str, ct: bytes) -> None:
    cut = len((stack.api_dir / "resources" / stack.bucket / f"{name}.small").read_bytes())
    s3_client(stack.s3_endpoint).put_object(Bucket=stack.bucket, Key=f"{name}.big", Body=ct[cut:])


FORGERIES = {
    # (format, the first forged chunk or block): in the small/big boundary
    # segment (segment 0 holds the small part), and in a later one.
    "v2, boundary segment": (2, 1),
    "v2, later segment": (2, 5),
    "v1, boundary segment": (1, 300),
    "v1, later segment": (1, 20_000),
}


def published(stack: Stack, fmt: int, name: str, data: bytes) -> bytes:
    if fmt == 2:
        return publish_v2(stack, name, data)
    stack.publish(name, data)
    return read_ciphertext(stack, name)


def forge(fmt: int, ct: bytes, data: bytes, start: int) -> tuple[bytes, bytes]:
    return forge_v2(ct, data, start) if fmt == 2 else forge_v1(ct, data, start)


def first_forged(ct: bytes, forged: bytes) -> int:
    return next(i for i in range(len(ct)) if ct[i] != forged[i])


@pytest.mark.parametrize("case", sorted(FORGERIES))
async def test_a_forged_big_part_sealed_under_the_genuine_header_never_reaches_the_client(
    publisher: Publisher, case: str
) -> None:
    fmt, start = FORGERIES[case]
    stack = publisher.stack
    data = pattern(10 * CHUNK + 12_345)
    ct = published(stack, fmt, "m.bin", data)
    forged_ct, forged_data = forge(fmt, ct, data, start)
    put_big(stack, "m.bin", forged_ct)
    release_resource(publisher, "m.bin", ct, fmt)
    await publisher.start_loader()
    status, length, received, was_cut = await stack.load_until_cut("m.bin")
    assert (status, length, was_cut) == (200, len(data), True)
    # Only genuine plaintext, and none made from the segment where the
    # forgery begins or after it.
    assert received == data[: len(received)]
    segment_start = first_forged(ct, forged_ct) // SEGMENT * SEGMENT
    assert len(received) <= segment_start
    assert forged_data != data
    assert cached_entries(stack, "m.bin") == []
    assert failures(stack, "hash") == 1
    # The genuine part loads again once the CDN holds it.
    put_big(stack, "m.bin", ct)
    assert await stack.load("m.bin") == (200, data)


async def test_without_a_publisher_the_same_forgery_goes_through(stack: Stack) -> None:
    """What the segment list closes: with no publisher trusted (Azaion's
    behaviour), a forged v2 big part verifies chunk by chunk."""
    data = pattern(10 * CHUNK)
    ct = publish_v2(stack, "m.bin", data)
    forged_ct, forged_data = forge_v2(ct, data, 5)
    put_big(stack, "m.bin", forged_ct)
    await stack.login()
    assert await stack.load("m.bin") == (200, forged_data)


@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_a_forgery_written_over_the_cache_entry_never_reaches_the_client(
    publisher: Publisher, fmt: int
) -> None:
    stack = publisher.stack
    data = pattern(10 * CHUNK + 999)
    ct = published(stack, fmt, "m.bin", data)
    release_resource(publisher, "m.bin", ct, fmt)
    await publisher.start_loader()
    assert await stack.load("m.bin") == (200, data)
    [entry] = cached_entries(stack, "m.bin")
    forged_ct, _ = forge(fmt, ct, data, 5 if fmt == 2 else 20_000)
    small = len(ct) - entry.stat().st_size
    entry.write_bytes(forged_ct[small:])  # in place, under its name
    status, length, received, was_cut = await stack.load_until_cut("m.bin")
    assert (status, length, was_cut) == (200, len(data), True)
    assert received == data[: len(received)]
    assert len(received) <= first_forged(ct, forged_ct) // SEGMENT * SEGMENT
    assert cached_entries(stack, "m.bin") == []  # the forged entry is gone
    assert await stack.load("m.bin") == (200, data)  # and the CDN serves it whole


SIZES = [SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT - 1, 3 * SEGMENT + 1, 17 * SEGMENT + 5]


@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize("fmt", [1, 2], ids=["v1", "v2"])
async def test_ranged_loads_across_segment_boundaries_stay_byte_identical(
    publisher: Publisher, fmt: int, connections: int
) -> None:
    stack = publisher.stack
    artifacts, plain = {}, {}
    for size in SIZES:
        name = f"m{size}.bin"
        plain[name] = pattern(size)
        ct = published(stack, fmt, name, plain[name])
        publish_segments(stack, name, ct)
        artifacts[f"{stack.bucket}/{name}"] = artifact_of(ct, fmt)
    publisher.release(1, artifacts)
    # Parts of two segments each, all read in parallel where the width allows.
    downloads = DownloadSettings(
        connections=connections, part_size=2 * SEGMENT, parallel_min=0, inflight_max=4 << 20
    )
    await publisher.start_loader(downloads=downloads)
    for name, data in plain.items():
        assert await stack.load(name) == (200, data), name
        assert await stack.load(name) == (200, data), name  # from the cache, verified again


# -- unlock under a release ---------------------------------------------------------


async def release_archive(
    publisher: Publisher, plain_archive: Path, version: int = 1
) -> tuple[Path, bytes]:
    """``images.enc`` (v2), its list beside the manifest, and a manifest
    listing it; returns the archive and its ciphertext."""
    stack = publisher.stack
    archive = await encrypted_archive(stack, plain_archive, fmt=2)
    ct = archive.read_bytes()
    publish_segments(stack, ARCHIVE_KEY, ct, folder="")
    publisher.release(version, {ARCHIVE_KEY: artifact_of(ct)})
    return archive, ct


async def test_an_archive_with_a_forged_segment_loads_nothing(
    publisher: Publisher, clean_engine: EngineService, plain_archive: Path
) -> None:
    stack = publisher.stack
    archive, ct = await release_archive(publisher, plain_archive)
    fragment = (stack.api_dir / "key_fragment").read_bytes()
    # Sealed under the genuine header and the fragment every device user
    # can fetch: every chunk's tag verifies; only the segment list tells.
    plain = await asyncio.to_thread(plain_archive.read_bytes)
    middle = len(plain) // CHUNK // 2
    key = hashlib.sha256(fragment).digest()
    forged_plain = plain[: middle * CHUNK] + bytes(len(plain) - middle * CHUNK)
    forged = oracle_encrypt(key, forged_plain, s=ct[6], salt=ct[8:24], prefix=ct[24:31])
    archive.write_bytes(forged)
    await start_unlocker(stack, clean_engine, archive, publisher_key=publisher.public)
    await unlock(stack)
    status = await final_status(stack)
    assert status["state"] == "error"
    assert status["error"].startswith("integrity: hash"), status
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)
    assert failures(stack, "hash") == 1

    archive.write_bytes(ct)
    await unlock(stack)
    assert (await final_status(stack))["state"] == "ready"


async def test_unlock_refuses_an_archive_the_manifest_does_not_describe(
    publisher: Publisher, clean_engine: EngineService, plain_archive: Path
) -> None:
    stack = publisher.stack
    archive, ct = await release_archive(publisher, plain_archive)
    publisher.release(2, {ARCHIVE_KEY: replace(artifact_of(ct), size=len(ct) + 1)})
    await start_unlocker(stack, clean_engine, archive, publisher_key=publisher.public)
    await unlock(stack)
    status = await final_status(stack)
    assert status["state"] == "error"
    assert status["error"].startswith("integrity: size"), status
    for ref in IMAGES:
        assert not image_exists(clean_engine, ref)


async def test_a_genuine_archive_is_read_once(
    publisher: Publisher, clean_engine: EngineService, plain_archive: Path, tmp_path: Path
) -> None:
    """Verified as it streams into the engine: the loader's reads (``rchar``)
    grow by about one archive, not two."""
    stack = publisher.stack
    archive, ct = await release_archive(publisher, plain_archive)
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as cleanup:
        child, url = await start_loader_process(
            stack.api_url,
            tmp_path / "state",
            logs,
            cleanup,
            EDGELOADER_AUTH="compat",
            EDGELOADER_PUBLISHER_KEY=str(publisher.public),
            IMAGES_PATH=str(archive),
            EDGELOADER_API_SERVICES=",".join(REPOS),
            DOCKER_HOST=clean_engine.docker_host,
        )
        stack.loader_url = url
        before = read_chars(child.pid)
        await unlock(stack)
        assert (await final_status(stack))["state"] == "ready"
        grew = read_chars(child.pid) - before
    assert len(ct) <= grew < 1.5 * len(ct), (grew, len(ct))


def read_chars(pid: int) -> int:
    """Bytes the process has read through read() and its kin."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


# -- the publisher, end to end ------------------------------------------------------


async def test_the_publisher_commands_make_a_release_boxes_accept(
    publisher: Publisher,
    clean_engine: EngineService,
    plain_archive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """keygen, publish resource, publish archive and publish manifest as an
    operator runs them; then a box that trusts the key loads and unlocks."""
    stack = publisher.stack
    keys = tmp_path / "keys"
    assert await asyncio.to_thread(publisher_cli.main, ["publish", "keygen", "-o", str(keys)]) == 0
    assert stat.S_IMODE((keys / "publisher_key.pem").stat().st_mode) == 0o600
    assert await asyncio.to_thread(publisher_cli.main, ["publish", "keygen", "-o", str(keys)]) == 2

    model = tmp_path / "model.bin"
    model.write_bytes(pattern(3 * 1024 * 1024 + 150_000))
    monkeypatch.setenv("RESOURCE_API_URL", stack.api_url)
    monkeypatch.setenv("EDGELOADER_PUBLISH_EMAIL", ADMIN[0])
    monkeypatch.setenv("EDGELOADER_PUBLISH_PASSWORD", ADMIN[1])
    argv = ["publish", "resource", str(model), "--folder", stack.bucket]
    assert await asyncio.to_thread(publisher_cli.main, argv) == 0
    # The resource's segment list went up beside its small part.
    ct = read_ciphertext(stack, "model.bin")
    path = stack.api_dir / "resources" / stack.bucket / "model.bin.segments"
    assert path.read_bytes() == segment_list(ct, 1 << 20)

    archive = tmp_path / "images.enc"
    argv = ["publish", "archive", str(plain_archive), "-o", str(archive)]
    assert (
        await asyncio.to_thread(publisher_cli.main, [*argv, "--data-dir", str(stack.api_dir)]) == 0
    )
    argv = ["publish", "manifest", "--key", str(keys / "publisher_key.pem"), "--version", "2"]
    argv += ["--resource", f"{stack.bucket}/model.bin", "--archive", str(archive)]
    argv += ["--data-dir", str(stack.api_dir)]
    assert await asyncio.to_thread(publisher_cli.main, argv) == 0
    manifest = json.loads((stack.api_dir / "manifest.json").read_bytes())
    entry = manifest["artifacts"][f"{stack.bucket}/model.bin"]
    assert entry == {
        "sha256": hashlib.sha256(ct).hexdigest(),
        "size": len(ct),
        "format": 2,
        "segment": 1 << 20,
        "segments": hashlib.sha256(segment_list(ct, 1 << 20)).hexdigest(),
    }
    archive_list = (stack.api_dir / "images.enc.segments").read_bytes()
    assert archive_list == segment_list(archive.read_bytes(), 1 << 20)

    public = keys / "publisher_key.pub.pem"
    await start_unlocker(stack, clean_engine, archive, publisher_key=public)
    await stack.login()
    assert await stack.load("model.bin") == (200, model.read_bytes())
    await unlock(stack)
    assert (await final_status(stack))["state"] == "ready"


async def test_segment_lists_can_be_added_to_a_release_published_without_them(
    publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resource published before segment lists existed (no list upstream)
    gets one from `publish manifest`, without being encrypted again."""
    stack = publisher.stack
    data = pattern(2 * 1024 * 1024 + 5)
    ct = publish_v2(stack, "old.bin", data)  # no list
    monkeypatch.setenv("RESOURCE_API_URL", stack.api_url)
    monkeypatch.setenv("EDGELOADER_PUBLISH_EMAIL", ADMIN[0])
    monkeypatch.setenv("EDGELOADER_PUBLISH_PASSWORD", ADMIN[1])
    argv = ["publish", "manifest", "--key", str(publisher.private_path), "--version", "1"]
    argv += ["--resource", f"{stack.bucket}/old.bin", "--data-dir", str(stack.api_dir)]
    argv += ["--segment", str(SEGMENT)]
    assert await asyncio.to_thread(publisher_cli.main, argv) == 0
    assert read_ciphertext(stack, "old.bin") == ct  # the same ciphertext
    await publisher.start_loader()
    assert await stack.load("old.bin") == (200, data)
