"""The auth building blocks on their own: store, sealed key (the throttle:
test_throttle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloader.auth import signing_key
from edgeloader.auth.store import AuthStore, RefreshRecord, Rotation
from edgeloader.errors import ConfigError


def record(token: str, family: str, expires: float = 2e9) -> RefreshRecord:
    return RefreshRecord(token, family, "user:a", "Admin", expires)


def test_rotation_and_reuse(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.add_refresh(record("t1", "f"))
    assert store.rotate_refresh("t1", record("t2", "f")) is Rotation.ROTATED
    assert store.rotate_refresh("t1", record("t3", "f")) is Rotation.REUSED
    assert store.rotate_refresh("t2", record("t4", "f")) is Rotation.REUSED
    assert store.rotate_refresh("nope", record("t5", "f")) is Rotation.UNKNOWN
    store.close()


def test_prune_drops_only_what_expired(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.add_refresh(record("old", "f1", expires=100))
    store.add_refresh(record("new", "f2", expires=1e10))
    store.revoke_access("j-old", 100)
    store.revoke_access("j-new", 1e10)
    assert store.prune(now=1000) == 2
    assert not store.access_revoked("j-old")
    assert store.access_revoked("j-new")
    assert store.rotate_refresh("new", record("newer", "f2")) is Rotation.ROTATED
    store.close()


def test_sealed_key_opens_on_the_same_device_only(tmp_path: Path) -> None:
    first = signing_key.load_or_create(tmp_path, "device A")
    again = signing_key.load_or_create(tmp_path, "device A")
    assert first.kid == again.kid
    assert first.jwk() == again.jwk()
    with pytest.raises(ConfigError, match="sealed on another device"):
        signing_key.load_or_create(tmp_path, "device B")
    sealed = (tmp_path / signing_key.KEY_FILE).read_text()
    assert "PRIVATE" not in sealed
    assert set(json.loads(sealed)) == {"format", "kid", "salt", "nonce", "sealed"}


def test_unreadable_sealed_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / signing_key.KEY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        signing_key.load_or_create(tmp_path, "device A")
