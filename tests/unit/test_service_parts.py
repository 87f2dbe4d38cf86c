"""Service building blocks on their own: the upload split, the model cache,
names, the CDN settings and the engine's error mapping."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloader import crypto
from edgeloader.config import CdnOverrides
from edgeloader.errors import (
    ConfigError,
    DecryptionError,
    EngineError,
    NotFound,
    UnsafeName,
)
from edgeloader.names import safe_folder, safe_name
from edgeloader.services.cache import ModelCache
from edgeloader.upstream.cdn import CdnConfig
from edgeloader.upstream.engine import Engine

# -- the split of a resource's ciphertext -----------------------------------------------


async def pieces(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 40_000),
    cuts=st.lists(st.integers(0, 40_000), max_size=6),
)
async def test_split_follows_the_rule_for_any_chunking(length: int, cuts: list[int]) -> None:
    ct = os.urandom(length)
    small, big = await crypto.split_ciphertext(pieces(ct, cuts))
    rest = b"".join([chunk async for chunk in big])
    assert len(small) == min(3072, length * 3 // 10)
    assert small + rest == ct


@pytest.mark.parametrize(
    ("length", "small"),
    [(0, 0), (53, 15), (54, 16), (10_239, 3071), (10_240, 3072), (1 << 20, 3072)],
)
def test_small_part_length_boundaries(length: int, small: int) -> None:
    assert crypto.small_part_length(length) == small


def test_parts_are_named_in_one_place() -> None:
    assert crypto.small_name("yolo.bin") == "yolo.bin.small"
    assert crypto.big_name("yolo.bin") == "yolo.bin.big"


def test_the_plaintext_length_of_v1_reads_only_the_tail() -> None:
    for size in (0, 1, 15, 16, 37, 5000, 20_000):
        plain = os.urandom(size)
        ct = crypto.encrypt_v1(crypto.resource_key(), plain)
        assert crypto.resource_plaintext_length(1, ct[:32], len(ct), ct[-crypto.V1_TAIL :]) == size
    with pytest.raises(DecryptionError):
        crypto.resource_plaintext_length(1, b"x" * 32, 27, b"y" * 27)


# -- the model cache --------------------------------------------------------------------


async def commit(cache: ModelCache, small: bytes, data: bytes) -> None:
    writer = cache.writer("models", "m", small)
    assert writer is not None
    await writer.write(data)
    await writer.commit()


async def test_cache_commit_makes_one_entry_visible_and_drops_the_old(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    assert cache.lookup("models", "m") is None
    await commit(cache, b"small-1", b"big part, version 1")
    entry = cache.lookup("models", "m")
    assert entry is not None
    assert entry.path.read_bytes() == b"big part, version 1"
    assert entry.sha256 == hashlib.sha256(b"big part, version 1").hexdigest()
    assert entry.matches(b"small-1", None)
    assert not entry.matches(b"small-2", None)
    assert not entry.matches(b"small-1", entry.sha256)  # not named by a release

    await commit(cache, b"small-2", b"version 2")
    entries = list((tmp_path / "models" / "m").iterdir())
    assert len(entries) == 1
    latest = cache.lookup("models", "m")
    assert latest is not None
    assert latest.matches(b"small-2", None)


async def test_cache_abort_keeps_the_previous_entry_and_no_partial(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    await commit(cache, b"s", b"good")
    broken = cache.writer("models", "m", b"t")
    assert broken is not None
    await broken.write(b"half of a download")
    broken.abort()
    files = list((tmp_path / "models" / "m").iterdir())
    assert [f.read_bytes() for f in files] == [b"good"]


async def test_cache_drops_what_is_not_an_entry_and_never_follows_links(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    await commit(cache, b"s", b"good")
    entry_dir = tmp_path / "cache" / "models" / "m"
    (entry_dir / ("0" * 32 + "-" + "0" * 64 + ".big")).mkdir()  # a folder in an entry's place
    (entry_dir / "old-style.big").write_bytes(b"x")
    (entry_dir / ".x.big.1234.partial").write_bytes(b"half")
    entry = cache.lookup("models", "m")
    assert entry is not None
    assert entry.path.read_bytes() == b"good"
    assert sorted(p.name for p in entry_dir.iterdir()) == sorted(
        [entry.path.name, ".x.big.1234.partial"]
    )
    assert cache.remove_partials() == 1

    # A folder that is a symbolic link is neither read nor written through.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "m").mkdir()
    precious = victim / "m" / ("1" * 32 + "-" + "2" * 64 + ".big")
    precious.write_bytes(b"not ours")
    (tmp_path / "cache" / "linked").symlink_to(victim)
    assert cache.lookup("linked", "m") is None
    assert cache.writer("linked", "m", b"s") is None
    assert precious.read_bytes() == b"not ours"


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["yolo.bin", "A b+c@d_e-f.1", "x" * 200])
def test_safe_names_pass(name: str) -> None:
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a\x00b", "a\nb", " lead", "x" * 201, 7],
)
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(UnsafeName):
        safe_name(name)


@pytest.mark.parametrize("folder", ["models", "a.b-c", "abc"])
def test_safe_folders_pass(folder: str) -> None:
    assert safe_folder(folder) == folder


@pytest.mark.parametrize("folder", ["ab", "Models", "-ab", "ab-", "a_b", "x" * 64, "a b"])
def test_folders_must_be_bucket_names(folder: str) -> None:
    with pytest.raises(UnsafeName):
        safe_folder(folder)


# -- CDN settings -----------------------------------------------------------------------

YAML = (
    "host: http://s3.local:9000\n"
    "downloader_access_key: dk\ndownloader_access_secret: ds\n"
    "uploader_access_key: uk\nuploader_access_secret: us\n"
)


def test_cdn_yaml_with_overrides_on_top() -> None:
    config = CdnConfig.resolve(YAML, CdnOverrides(host="http://other:1", region="eu-west-1"))
    assert config.host == "http://other:1"
    assert config.downloader_access_key == "dk"
    assert config.uploader_access_secret == "us"
    assert config.region == "eu-west-1"


def test_the_environment_alone_can_configure_the_cdn() -> None:
    full = CdnOverrides.from_env(
        {
            "EDGELOADER_CDN_HOST": "http://s3:1",
            "EDGELOADER_CDN_DOWNLOADER_ACCESS_KEY": "a",
            "EDGELOADER_CDN_DOWNLOADER_ACCESS_SECRET": "b",
            "EDGELOADER_CDN_UPLOADER_ACCESS_KEY": "c",
            "EDGELOADER_CDN_UPLOADER_ACCESS_SECRET": "d",
        }
    )
    assert CdnConfig.complete_without_yaml(full)
    assert CdnConfig.resolve(None, full).uploader_access_key == "c"
    assert not CdnConfig.complete_without_yaml(CdnOverrides(host="http://s3:1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host: [unclosed", "not valid YAML"),
        ("- a list\n- not a mapping\n", "must be a mapping"),
        ("host: http://s3:1\n", "missing: downloader_access_key"),
    ],
)
def test_bad_cdn_yaml_is_a_clear_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CdnConfig.resolve(text, CdnOverrides())


def test_a_bad_cdn_host_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="EDGELOADER_CDN_HOST"):
        CdnOverrides.from_env({"EDGELOADER_CDN_HOST": "ftp://x"})


# -- the engine's one error mapping -----------------------------------------------------


def docker_error(status: int, message: str = "boom") -> aiodocker.DockerError:
    return aiodocker.DockerError(status, message)


def test_engine_maps_each_kind_of_failure() -> None:
    engine = Engine("unix:///nowhere/engine.sock")
    with (
        pytest.raises(NotFound, match="no such image"),
        engine.api.mapped("x", missing="no such image"),
    ):
        raise docker_error(404)
    with (
        pytest.raises(EngineError, match="image load failed: boom"),
        engine.api.mapped("image load"),
    ):
        raise docker_error(500)
    with pytest.raises(EngineError, match="unreachable at unix:///nowhere"), engine.api.mapped("x"):
        raise docker_error(900)
    with pytest.raises(EngineError, match="unreachable"), engine.api.mapped("x"):
        raise aiohttp.ClientConnectionError("refused")
    with pytest.raises(EngineError, match="x failed"), engine.api.mapped("x", missing=None):
        raise docker_error(404)


def test_our_error_inside_a_streamed_body_surfaces_as_itself() -> None:
    engine = Engine(None)
    wrapped = aiohttp.ClientPayloadError("upload broke")
    wrapped.__cause__ = DecryptionError()
    with pytest.raises(DecryptionError), engine.api.mapped("image load"):
        raise wrapped


async def test_an_engine_that_is_not_there_is_unreachable(tmp_path: Path) -> None:
    engine = Engine(f"unix://{tmp_path}/no.sock")
    try:
        with pytest.raises(EngineError, match="unreachable"):
            await engine.image_ids()
        with pytest.raises(EngineError, match="unreachable"):
            await engine.missing_images(("a:b",))
    finally:
        await engine.close()


async def test_no_engine_at_all_is_a_clear_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr("os.path.exists", lambda path: False)  # no default socket either
    engine = Engine(None)
    with pytest.raises(EngineError, match="no container engine"):
        await engine.image_ids()
    await engine.close()
