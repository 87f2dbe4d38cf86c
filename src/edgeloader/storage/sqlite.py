"""The one way the service opens a SQLite database under its state folder.

- WAL with ``synchronous=FULL``: a committed transaction survives a power cut.
- Files are private: the database is created 0600 before SQLite opens it,
  and SQLite gives its ``-wal`` and ``-shm`` files the database's mode.
- Writes are ``BEGIN IMMEDIATE`` transactions, committed whole or not at all.
- The schema is a list of migrations; ``PRAGMA user_version`` records how
  many have run, so a newer service upgrades an older file in place.

One connection per database, shared by worker threads behind a lock: the
service's writes are small, and this keeps transactions strictly ordered.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgeloader.storage.state_dir import ensure_private_dir

__all__ = ["Database"]

_COMPANIONS = ("-wal", "-shm", "-journal")


class Database:
    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        ensure_private_dir(path.parent)
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for suffix in ("", *_COMPANIONS):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.chmod(0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrations)
        except BaseException:
            self._db.close()
            raise

    def _migrate(self, migrations: Sequence[str]) -> None:
        with self.transaction() as db:
            done = int(db.execute("PRAGMA user_version").fetchone()[0])
            if done > len(migrations):
                raise sqlite3.DatabaseError(
                    f"{self.path} was written by a newer edgeloader (schema {done})"
                )
            for number, script in enumerate(migrations[done:], start=done + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed whole or rolled back whole."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, one caller at a time."""
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _statements(script: str) -> list[str]:
    """Splits a migration into statements (``executescript`` would commit
    the open transaction, so each statement runs on its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {current.strip()[:60]!r}")
    return statements
