"""The CLI's credentials file: where it lives, its modes, one entry per
server, and its lock."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

import pytest

from edgeloader.cli.credentials import (
    CredentialStore,
    SavedTokens,
    config_dir,
    normalize_url,
)
from edgeloader.errors import ConfigError

URL = "http://127.0.0.1:8080"


def pair(tag: str = "a", expires_at: float = 2e9) -> SavedTokens:
    return SavedTokens(f"access-{tag}", f"refresh-{tag}", expires_at, "Admin", "admin@example.org")


def test_config_dir_follows_xdg_then_home() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"}) == Path("/x/cfg/edgeloader")
    # A relative XDG_CONFIG_HOME is invalid by the spec and ignored.
    assert config_dir({"XDG_CONFIG_HOME": "cfg", "HOME": "/home/u"}) == Path(
        "/home/u/.config/edgeloader"
    )
    assert config_dir({"HOME": "/home/u"}) == Path("/home/u/.config/edgeloader")


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("http://127.0.0.1:8080", URL),
        ("HTTP://127.0.0.1:8080/", URL),
        ("http://Box.Local:8080//", "http://box.local:8080"),
        ("https://box.example.org/loader/", "https://box.example.org/loader"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_urls_are_keys_in_one_spelling(given: str, key: str) -> None:
    assert normalize_url(given) == key


@pytest.mark.parametrize("bad", ["127.0.0.1:8080", "ftp://box", "http://", ""])
def test_a_url_that_is_not_http_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="must be http"):
        normalize_url(bad)


def test_pairs_are_kept_per_server_in_a_private_file(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "cfg" / "edgeloader")
    assert store.get(URL) is None
    with store.locked():
        store.put(URL, pair("a"))
        store.put("http://10.0.0.2:8080/", pair("b"))
    assert store.get(URL + "/") == pair("a")
    assert store.get("http://10.0.0.2:8080") == pair("b")
    assert store.urls() == ["http://10.0.0.2:8080", URL]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    # Written whole: no temporary file stays beside it.
    assert sorted(os.listdir(store.folder)) == [".credentials.lock", "credentials.json"]
    doc = json.loads(store.path.read_text())
    assert doc["servers"][URL]["refreshToken"] == "refresh-a"
    with store.locked():
        assert store.remove(URL)
        assert not store.remove(URL)
    assert store.get(URL) is None
    assert store.get("http://10.0.0.2:8080") == pair("b")


def test_a_file_readable_by_others_is_made_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = CredentialStore(tmp_path)
    with store.locked():
        store.put(URL, pair())
    store.path.chmod(0o644)
    assert store.get(URL) == pair()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "was readable by others (mode 0644); made it 0600" in capsys.readouterr().err


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON; remove it"):
        store.get(URL)
    # A malformed entry is ignored, the others still read.
    good = pair().as_json()
    store.path.write_text(json.dumps({"servers": {URL: {"accessToken": 1}, "http://b:1": good}}))
    assert store.get(URL) is None
    assert store.get("http://b:1") == pair()


def test_a_symlinked_file_is_not_followed(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "cfg")
    store.folder.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"servers": {URL: pair().as_json()}}))
    store.path.symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic links"):
        store.get(URL)


def test_the_lock_is_exclusive_across_open_files(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    with store.locked():
        fd = os.open(tmp_path / ".credentials.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / ".credentials.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    finally:
        os.close(fd)


def test_token_pair_from_an_answer() -> None:
    answer = {"accessToken": "a", "refreshToken": "r", "expiresIn": 900, "role": "Operator"}
    got = SavedTokens.from_answer(answer, user="op@example.org", now=1000.0)
    assert got == SavedTokens("a", "r", 1900.0, "Operator", "op@example.org")
    assert not got.expired(now=1000.0)
    assert got.expired(now=1871.0)  # within the 30 s margin
    assert SavedTokens.from_json(got.as_json()) == got
    bad_answers: list[object] = [
        {},
        {"accessToken": "a", "refreshToken": "r"},
        [],
        {**answer, "expiresIn": True},
    ]
    for bad in bad_answers:
        with pytest.raises(ValueError, match=r"token pair|expiresIn"):
            SavedTokens.from_answer(bad)
