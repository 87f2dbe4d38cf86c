"""The one atomic write, the one SQLite helper and the private state folder."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from edgeloader.storage.files import AtomicFile, atomic_write
from edgeloader.storage.sqlite import Database
from edgeloader.storage.state_dir import ensure_private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_whole_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    atomic_write(target, b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail_halfway() -> None:
        with AtomicFile(target) as out:
            out.write(b"half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_leaving_without_commit_writes_nothing(tmp_path: Path) -> None:
    with AtomicFile(tmp_path / "f") as out:
        out.write(b"never committed")
    assert list(tmp_path.iterdir()) == []


def test_exclusive_commit_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_private_dir_is_created_and_tightened(tmp_path: Path) -> None:
    fresh = ensure_private_dir(tmp_path / "a" / "b")
    assert mode(fresh) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_private_dir(loose)
    assert mode(loose) == 0o700


MIGRATIONS = (
    "CREATE TABLE t (x INTEGER);\nCREATE INDEX t_x ON t (x);",
    "ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT '';",
)


def test_migrations_run_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "db.sqlite3"
    db = Database(path, MIGRATIONS[:1])
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
    db.close()
    db = Database(path, MIGRATIONS)
    with db.reading() as conn:
        assert conn.execute("SELECT x, y FROM t").fetchall() == [(1, "")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        Database(path, MIGRATIONS[:1])


def test_database_files_and_folder_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "db.sqlite3"
    db = Database(path, MIGRATIONS)
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (2)")
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"):
        assert mode(path.with_name(name)) == 0o600, name
    assert mode(path.parent) == 0o700
    db.close()


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3", MIGRATIONS)

    def fail_between_statements() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t (x) VALUES (3)")
            raise RuntimeError("crash between statements")

    with pytest.raises(RuntimeError):
        fail_between_statements()
    with db.reading() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    db.close()
