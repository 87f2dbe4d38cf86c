"""Pre-staging's pieces that need no stack: v2 chunks released only once
verified (also when resumed), the partial file, and the download settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeloader import crypto
from edgeloader.config import DownloadSettings
from edgeloader.errors import ConfigError, DecryptionError
from edgeloader.services.cache import ModelCache
from edgeloader.services.prefetch import _V2Chunks

CHUNK = (1 << 16) + 16


def resource(size: int) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, small part, big part) of a v2 resource of ``size`` bytes."""
    ct = crypto.encrypt_v2(crypto.resource_key(), os.urandom(size))
    cut = crypto.small_part_length(len(ct))
    return ct, ct[:cut], ct[cut:]


def released(small: bytes, total: int, start: int, big: bytes, piece: int) -> bytes:
    chunks = _V2Chunks(small, total, start)
    out = b"".join(b"".join(chunks.feed(big[i : i + piece])) for i in range(start, len(big), piece))
    chunks.finish()
    return out


@pytest.mark.parametrize("size", [0, 1, 100, 65536, 65537, 5 * 65536 + 3])
@pytest.mark.parametrize("piece", [1000, 65536, 1 << 20])
def test_every_big_byte_is_released_once_verified(size: int, piece: int) -> None:
    ct, small, big = resource(size)
    assert released(small, len(ct), 0, big, piece) == big


def test_a_resumed_read_starts_at_a_chunk_boundary() -> None:
    ct, small, big = resource(6 * 65536 + 5)
    boundary = crypto.v2_chunk_range(ct[:32], len(ct), 3)[0] - len(small)
    assert released(small, len(ct), boundary, big, 10_000) == big[boundary:]


def test_a_resume_off_a_chunk_boundary_is_refused() -> None:
    ct, small, big = resource(6 * 65536)
    with pytest.raises(DecryptionError):
        released(small, len(ct), 3 * CHUNK - len(small) + 16, big, 10_000)


def test_nothing_of_a_tampered_chunk_is_released() -> None:
    ct, small, big = resource(4 * 65536)
    bad = bytearray(big)
    bad[2 * CHUNK] ^= 1  # in chunk 2 (of the ciphertext, which starts len(small) earlier)
    chunks = _V2Chunks(small, len(ct), 0)
    out = b""

    def feed_all() -> None:
        nonlocal out
        for i in range(0, len(bad), 4096):
            out += b"".join(chunks.feed(bytes(bad[i : i + 4096])))

    with pytest.raises(DecryptionError):
        feed_all()
    assert big.startswith(out)
    assert len(out) < 2 * CHUNK


def test_a_stream_cut_before_the_final_chunk_fails() -> None:
    ct, small, big = resource(3 * 65536)
    chunks = _V2Chunks(small, len(ct), 0)
    chunks.feed(big[: -CHUNK // 2])
    with pytest.raises(DecryptionError):
        chunks.finish()


def test_a_tiny_resource_whose_header_spans_both_parts() -> None:
    ct, small, big = resource(10)
    assert len(small) < 32
    assert released(small, len(ct), 0, big, 7) == big


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
