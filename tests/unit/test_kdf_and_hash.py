"""Key derivation known answers, computed here from docs/protocol.md with hashlib."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from edgeloader import _core, crypto


def ref_hash_b64(s: str) -> str:
    return base64.b64encode(hashlib.sha384(s.encode()).digest()).decode()


HARDWARE = "CPU: Test CPU. GPU: unknown. Memory: 2048 MB. DriveSerial: SN123"


@pytest.mark.parametrize("text", ["", "abc", "Azaion_x_%$$$)0_", "ünïcødé ✓"])
def test_hash_b64(text: str) -> None:
    assert _core.hash_b64(text) == ref_hash_b64(text)


def test_hw_hash() -> None:
    assert _core.hw_hash(HARDWARE) == ref_hash_b64(f"Azaion_{HARDWARE}_%$$$)0_")


def test_api_key() -> None:
    email, password = "operator@example.org", "s3cret-ü"
    hw = ref_hash_b64(f"Azaion_{HARDWARE}_%$$$)0_")
    key_str = ref_hash_b64(f"{email}-{password}-{hw}-#%@AzaionKey@%#---")
    expected = hashlib.sha256(key_str.encode()).digest()
    assert crypto.api_key(email, password, HARDWARE) == expected
    assert len(expected) == 32


def test_resource_key() -> None:
    key_str = ref_hash_b64("-#%@AzaionKey@%#---234sdfklgvhjbnn")
    assert crypto.resource_key() == hashlib.sha256(key_str.encode()).digest()


def test_archive_key_hashes_the_raw_fragment() -> None:
    fragment = bytes(range(256)) + b"\x00\xff"
    assert crypto.archive_key(fragment) == hashlib.sha256(fragment).digest()


def test_key_from_str() -> None:
    assert _core.key_from_str("abc") == hashlib.sha256(b"abc").digest()


def test_streaming_sha256_matches_hashlib() -> None:
    data = os.urandom(300_000)
    hasher = crypto.Sha256()
    for i in range(0, len(data), 70_001):
        hasher.update(memoryview(data)[i : i + 70_001])
    assert hasher.digest() == hashlib.sha256(data).digest()
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
