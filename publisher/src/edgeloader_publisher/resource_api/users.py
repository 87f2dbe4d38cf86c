"""The reference Resource API's user store: SQLite and scrypt.

Password hashes are stored as ``scrypt$n$r$p$salt$hash`` (hex salt and
hash), so the cost parameters can be raised later without breaking old rows.
Emails are matched exactly: the loader derives its API key from the email it
was configured with, so a case-insensitive login would only move the failure
to a confusing decryption error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from edgeloader.publishing import Role

__all__ = ["User", "UserStore", "hash_password", "verify_password"]

_SCHEME = "scrypt"
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    role: str


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL's default 32 MiB limit is too tight once n or r are raised.
    maxmem = 256 * n * r * p + (1 << 20)
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=_HASH_BYTES, maxmem=maxmem
    )


def hash_password(password: str) -> str:
    """Hashes with a fresh random salt and the current cost parameters."""
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Checks ``password`` against a hash from :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = bytes.fromhex(digest)
        actual = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


class UserStore:
    """Users in one SQLite file; safe to call from worker threads."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        # Unknown users are checked against this, so a miss costs one scrypt too.
        self._dummy_hash = hash_password(os.urandom(16).hex())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_user(self, email: str, password: str, role: str) -> tuple[User, bool]:
        """Adds a user, or replaces the password and role of an existing one.

        Returns the user and ``True`` when an existing user was replaced (it
        keeps its id). Raises ``ValueError`` for an empty email or password
        or an unknown role.
        """
        if not email or email != email.strip():
            raise ValueError("email must be non-empty without surrounding spaces")
        if not password:
            raise ValueError("password must not be empty")
        if role not in Role.names():
            raise ValueError(f"unknown role {role!r} (valid: {', '.join(Role.names())})")
        encoded = hash_password(password)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                replaced = (
                    self._db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone()
                    is not None
                )
                row = self._db.execute(
                    "INSERT INTO users (email, role, password_hash) VALUES (?, ?, ?) "
                    "ON CONFLICT(email) DO UPDATE SET "
                    "role = excluded.role, password_hash = excluded.password_hash "
                    "RETURNING id",
                    (email, role, encoded),
                ).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return User(id=int(row[0]), email=email, role=role), replaced

    def get(self, email: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, email, role FROM users WHERE email = ?", (email,)
            ).fetchone()
        return None if row is None else User(id=int(row[0]), email=row[1], role=row[2])

    def verify(self, email: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else ``None``.

        Runs scrypt whether or not the user exists, so the answer time does
        not tell which emails are registered. CPU-bound: call it from a thread.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT id, email, role, password_hash FROM users WHERE email = ?", (email,)
            ).fetchone()
        encoded = self._dummy_hash if row is None else str(row[3])
        ok = verify_password(password, encoded)
        if row is None or not ok:
            return None
        return User(id=int(row[0]), email=row[1], role=row[2])
