"""The user store and the add-user command."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from edgeloader_publisher.cli import build_parser, main
from edgeloader_publisher.resource_api import users
from edgeloader_publisher.resource_api.server import USERS_FILE
from edgeloader_publisher.resource_api.users import User, UserStore, hash_password, verify_password


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / USERS_FILE)


def test_add_and_verify(store: UserStore) -> None:
    user, replaced = store.add_user("a@example.com", "pw-a", "Operator")
    assert not replaced
    assert user == User(id=user.id, email="a@example.com", role="Operator")
    assert store.verify("a@example.com", "pw-a") == user
    assert store.verify("a@example.com", "pw-b") is None
    assert store.verify("A@example.com", "pw-a") is None  # emails match exactly
    assert store.verify("nobody@example.com", "pw-a") is None
    store.close()


def test_replacing_keeps_the_id(store: UserStore) -> None:
    first, _ = store.add_user("a@example.com", "old", "Operator")
    second, replaced = store.add_user("a@example.com", "new", "Admin")
    assert replaced
    assert second == User(id=first.id, email="a@example.com", role="Admin")
    assert store.verify("a@example.com", "old") is None
    assert store.verify("a@example.com", "new") == second
    store.close()


def test_users_persist(tmp_path: Path) -> None:
    with UserStore(tmp_path / USERS_FILE) as store:
        user, _ = store.add_user("a@example.com", "pw", "Validator")
    with UserStore(tmp_path / USERS_FILE) as store:
        assert store.verify("a@example.com", "pw") == user
        assert store.get("a@example.com") == user


@pytest.mark.parametrize(
    ("email", "password", "role", "message"),
    [
        ("", "pw", "Operator", "email"),
        (" a@b ", "pw", "Operator", "email"),
        ("a@b", "", "Operator", "password"),
        ("a@b", "pw", "Root", "unknown role"),
    ],
)
def test_bad_users_are_refused(
    store: UserStore, email: str, password: str, role: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_user(email, password, role)
    store.close()


def test_hash_carries_its_parameters() -> None:
    encoded = hash_password("pw")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(bytes.fromhex(salt)) == 16
    assert len(bytes.fromhex(digest)) == 32
    assert encoded != hash_password("pw")  # fresh salt
    # A hash made with other parameters still verifies: they are read from the row.
    salt_bytes = os.urandom(16)
    other = users._scrypt("pw", salt_bytes, 2**10, 4, 2)
    old = f"scrypt$1024$4$2${salt_bytes.hex()}${other.hex()}"
    assert verify_password("pw", old)
    assert not verify_password("nope", old)
    assert not verify_password("pw", "garbage")
    assert not verify_password("pw", "md5$1$1$1$00$00")


def test_unknown_user_costs_a_scrypt_too(store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = users._scrypt

    def counting(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append(n)
        return real(password, salt, n, r, p)

    store.add_user("a@example.com", "pw", "Operator")
    monkeypatch.setattr(users, "_scrypt", counting)
    assert store.verify("nobody@example.com", "pw") is None
    assert store.verify("a@example.com", "wrong") is None
    assert calls == [2**14, 2**14]
    store.close()


# -- add-user ---------------------------------------------------------------------------


def parse(*argv: str) -> list[str]:
    build_parser().parse_args(argv)  # argparse errors raise SystemExit here
    return list(argv)


def run(argv: list[str]) -> int:
    return main(argv)


def test_add_user_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["add-user", "u@example.com", "--role", "ResourceUploader", "--password-stdin"]
    argv += ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert run(parse(*argv)) == 0
    assert capsys.readouterr().out.startswith("added user u@example.com")

    monkeypatch.setattr("sys.stdin", io.StringIO("newer\r\n"))
    assert run(parse(*argv)) == 0
    out = capsys.readouterr()
    assert out.out.startswith("replaced user u@example.com")
    assert "newer" not in out.out + out.err
    with UserStore(tmp_path / USERS_FILE) as store:
        user = store.verify("u@example.com", "newer")
    assert user is not None
    assert user.role == "ResourceUploader"


def test_add_user_reads_the_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOADER_RESOURCE_API_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert run(parse("add-user", "u@example.com", "--role", "Admin", "--password-stdin")) == 0
    assert (tmp_path / "env-dir" / USERS_FILE).exists()


@pytest.mark.parametrize(
    ("role", "stdin", "flag", "message"),
    [
        ("Root", "pw\n", True, "unknown role"),
        ("Operator", "\n", True, "must not be empty"),
        ("Operator", "pw\n", False, "--password-stdin"),
    ],
)
def test_add_user_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    role: str,
    stdin: str,
    flag: bool,
    message: str,
) -> None:
    argv = ["add-user", "u@example.com", "--role", role, "--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert run(parse(*argv, *(["--password-stdin"] if flag else []))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
    assert not (tmp_path / USERS_FILE).exists()


def test_password_is_never_an_option() -> None:
    with pytest.raises(SystemExit):
        parse("add-user", "u@example.com", "--role", "Admin", "--password", "pw")
