"""Pre-staging's pieces that need no stack: what may be written to the
partial file (verified v2 chunks, or verified segments under a release,
also when a partial file is checked again after a restart), the partial
file itself, and the download settings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeloader import _core, crypto
from edgeloader.config import DownloadSettings
from edgeloader.errors import ConfigError, DecryptionError, IntegrityError
from edgeloader.services.cache import ModelCache, PartialEntry
from edgeloader.services.manifest import Artifact, Release, ReleaseGate
from edgeloader.services.prefetch import _Written

CHUNK = (1 << 16) + 16
SEGMENT = 1 << 16


def resource(size: int, fmt: int = 2) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, small part, big part) of a resource of ``size`` bytes."""
    plain = os.urandom(size)
    key = crypto.resource_key()
    ct = _core.encrypt_v2(key, plain) if fmt == 2 else _core.encrypt_v1(key, plain)
    cut = crypto.small_part_length(len(ct))
    return ct, ct[:cut], ct[cut:]


def release_of(ct: bytes, tmp_path: Path) -> Release:
    segments = _core.segment_list(ct, SEGMENT)
    artifact = Artifact(
        hashlib.sha256(ct).hexdigest(),
        len(ct),
        crypto.detect_format(ct[:4]),
        SEGMENT,
        hashlib.sha256(segments).hexdigest(),
    )
    return Release("models/m.bin", artifact, segments, ReleaseGate(None, tmp_path))


def fed(check: _Written, data: bytes, piece: int = 4096) -> list[bytes]:
    """Feeds ``data`` in pieces, keeping what came out, until it raises."""
    out: list[bytes] = []
    for i in range(0, len(data), piece):
        out.append(check.feed(data[i : i + piece]))
    return out


def written(check: _Written, big: bytes, piece: int) -> bytes:
    out = b"".join(check.feed(big[i : i + piece]) for i in range(0, len(big), piece))
    check.finish()
    return out


@pytest.mark.parametrize("size", [0, 1, 100, 65536, 65537, 5 * 65536 + 3])
@pytest.mark.parametrize("piece", [1000, 65536, 1 << 20])
def test_every_big_byte_is_written_once_verified(size: int, piece: int) -> None:
    ct, small, big = resource(size)
    check = _Written(small, len(ct), None)
    assert written(check, big, piece) == big
    assert check.digest() == hashlib.sha256(big).hexdigest()  # names the entry


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("size", [10, 3 * SEGMENT, 3 * SEGMENT + 5000])
def test_under_a_release_every_big_byte_is_written_once_its_segment_verified(
    tmp_path: Path, fmt: int, size: int
) -> None:
    ct, small, big = resource(size, fmt)
    assert written(_Written(small, len(ct), release_of(ct, tmp_path)), big, 10_000) == big


def test_under_a_release_nothing_of_a_forged_segment_is_written(tmp_path: Path) -> None:
    ct, small, big = resource(4 * SEGMENT, fmt=1)
    release = release_of(ct, tmp_path)
    forged = bytearray(big)
    forged[2 * SEGMENT - len(small) + 5] ^= 1  # in segment 2 of the whole ciphertext
    check = _Written(small, len(ct), release)
    good = b"".join(fed(check, bytes(forged[: 2 * SEGMENT])))
    with pytest.raises(IntegrityError) as raised:
        fed(check, bytes(forged[2 * SEGMENT :]))
    assert raised.value.reason == "hash"
    assert good == big[: 2 * SEGMENT - len(small)]  # segments 0 and 1, and nothing after


@pytest.mark.parametrize("under_release", [False, True], ids=["chunks", "segments"])
def test_a_restart_checks_the_partial_file_again_and_keeps_what_passes(
    tmp_path: Path, under_release: bool
) -> None:
    ct, small, big = resource(6 * 65536 + 5)
    release = release_of(ct, tmp_path) if under_release else None
    partial = PartialEntry(tmp_path, "a" * 32)
    partial.open(0)
    cut = 3 * 65536 + 999  # the journal's count, off any chunk or segment boundary
    partial.write(big[:cut])
    partial.close()
    check = _Written(small, len(ct), release)
    kept = check.replay(partial, cut)
    assert 0 < kept < cut
    # What passed ends on a boundary: the rest, fed afresh, completes it.
    fresh = _Written(small, len(ct), release)
    assert fresh.replay(partial, kept) == kept
    assert written(fresh, big[kept:], 10_000) == big[kept:]


def test_a_restart_drops_a_partial_file_forged_on_disk(tmp_path: Path) -> None:
    ct, small, big = resource(4 * 65536)
    partial = PartialEntry(tmp_path, "a" * 32)
    partial.open(0)
    partial.write(big[:100] + bytes([big[100] ^ 1]) + big[101 : 3 * 65536])
    partial.close()
    with pytest.raises(IntegrityError):
        _Written(small, len(ct), release_of(ct, tmp_path)).replay(partial, 3 * 65536)
    with pytest.raises(DecryptionError):
        _Written(small, len(ct), None).replay(partial, 3 * 65536)


def test_nothing_of_a_tampered_chunk_is_written() -> None:
    ct, small, big = resource(4 * 65536)
    bad = bytearray(big)
    bad[2 * CHUNK] ^= 1  # in chunk 2 (of the ciphertext, which starts len(small) earlier)
    check = _Written(small, len(ct), None)
    out = b"".join(fed(check, bytes(bad[: 2 * CHUNK - 100])))
    with pytest.raises(DecryptionError):
        fed(check, bytes(bad[2 * CHUNK - 100 :]))
    assert big.startswith(out)
    assert len(out) < 2 * CHUNK


def test_a_stream_cut_before_the_final_chunk_fails() -> None:
    ct, small, big = resource(3 * 65536)
    check = _Written(small, len(ct), None)
    check.feed(big[: -CHUNK // 2])
    with pytest.raises(DecryptionError):
        check.finish()


def test_a_tiny_resource_whose_header_spans_both_parts() -> None:
    ct, small, big = resource(10)
    assert len(small) < 32
    assert written(_Written(small, len(ct), None), big, 7) == big


def test_a_partial_entry_is_cut_to_what_is_known_good_and_committed(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    stale = cache.partial("models", "m.bin", "a" * 32)
    assert stale is not None
    stale.open(0)
    stale.write(b"old")
    stale.close()
    entry = cache.partial("models", "m.bin", "b" * 32)
    assert entry is not None
    assert not stale.path.exists()  # another publication's partial file goes
    assert entry.open(0) == 0
    entry.write(b"0123456789")
    entry.sync()
    entry.close()
    assert entry.open(4) == 4  # a restart: only what the journal counted stays
    entry.write(b"abc")
    committed = entry.commit("c" * 64)
    assert committed.path.read_bytes() == b"0123abc"
    assert cache.lookup("models", "m.bin") == committed
    assert not entry.path.exists()


def test_download_settings_from_the_environment() -> None:
    env = {
        "EDGELOADER_DOWNLOAD_CONNECTIONS": "2",
        "EDGELOADER_DOWNLOAD_PART_SIZE": str(1 << 20),
        "EDGELOADER_DOWNLOAD_PARALLEL_MIN": "0",
        "EDGELOADER_DOWNLOAD_INFLIGHT_MAX": str(16 << 20),
        "EDGELOADER_DOWNLOAD_MAX_RATE": "1000000",
        "EDGELOADER_DOWNLOAD_STALL_TIMEOUT": "5",
        "EDGELOADER_DOWNLOAD_RETRIES": "0",
        "EDGELOADER_DOWNLOAD_RETRY_BACKOFF": "0.1",
    }
    assert DownloadSettings.from_env(env) == DownloadSettings(
        2, 1 << 20, 0, 16 << 20, 1_000_000, 5, 0, 0.1
    )
    assert DownloadSettings.from_env({}) == DownloadSettings()
    with pytest.raises(ConfigError, match="at least EDGELOADER_DOWNLOAD_PART_SIZE"):
        DownloadSettings.from_env({"EDGELOADER_DOWNLOAD_PART_SIZE": str(128 << 20)})
    with pytest.raises(ConfigError, match="EDGELOADER_DOWNLOAD_CONNECTIONS must be 1-64"):
        DownloadSettings.from_env({"EDGELOADER_DOWNLOAD_CONNECTIONS": "0"})
