"""The auth store: SQLite in the state folder.

It holds refresh-token records, revoked access-token IDs, API keys and the
audit log, and never a raw token or key: tokens are stored as SHA-256
hashes and API keys as the hash of their secret part. Every change is one
transaction in WAL mode with full sync, so a crash at any point leaves the
database as it was before or after that change, never in between.

It also holds the login throttle's state (keys kept as SHA-256 digests, so
every row has the same size) and keeps byte counts of the throttle and the
audit in ``counters``, maintained by triggers, so both can be bounded by
bytes whatever the input (docs/security.md).

The methods are blocking and thread-safe; async code calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ConfigDict, Field

from edgeloader.storage.sqlite import Database
from edgeloader.wire import Record

DB_FILE = "auth.sqlite3"

# Each entry is one schema migration (storage/sqlite.py); append, never edit.
_MIGRATIONS = (
    """
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE TABLE IF NOT EXISTS revoked_access (
    jti TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    route TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
""",
    # 2: the login throttle, and the counts that bound it and the audit by bytes.
    """
CREATE TABLE IF NOT EXISTS throttle (
    key BLOB PRIMARY KEY,
    failures INTEGER NOT NULL,
    blocked_until REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS throttle_expires ON throttle (expires_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('throttle_rows', 0);
INSERT INTO counters (name, value)
SELECT 'audit_bytes', COALESCE(SUM(
        48
        + length(CAST(audit.subject AS BLOB))
        + length(CAST(audit.role AS BLOB))
        + length(CAST(audit.action AS BLOB))
        + length(CAST(audit.route AS BLOB))
        + length(CAST(audit.resource AS BLOB))
        + length(CAST(audit.outcome AS BLOB))
        + length(CAST(audit.detail AS BLOB))
    ), 0) FROM audit;
CREATE TRIGGER IF NOT EXISTS throttle_rows_insert AFTER INSERT ON throttle BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'throttle_rows';
END;
CREATE TRIGGER IF NOT EXISTS throttle_rows_delete AFTER DELETE ON throttle BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'throttle_rows';
END;
CREATE TRIGGER IF NOT EXISTS audit_bytes_insert AFTER INSERT ON audit BEGIN
    UPDATE counters SET value = value + (
        48
        + length(CAST(NEW.subject AS BLOB))
        + length(CAST(NEW.role AS BLOB))
        + length(CAST(NEW.action AS BLOB))
        + length(CAST(NEW.route AS BLOB))
        + length(CAST(NEW.resource AS BLOB))
        + length(CAST(NEW.outcome AS BLOB))
        + length(CAST(NEW.detail AS BLOB))
    )
    WHERE name = 'audit_bytes';
END;
CREATE TRIGGER IF NOT EXISTS audit_bytes_delete AFTER DELETE ON audit BEGIN
    UPDATE counters SET value = value - (
        48
        + length(CAST(OLD.subject AS BLOB))
        + length(CAST(OLD.role AS BLOB))
        + length(CAST(OLD.action AS BLOB))
        + length(CAST(OLD.route AS BLOB))
        + length(CAST(OLD.resource AS BLOB))
        + length(CAST(OLD.outcome AS BLOB))
        + length(CAST(OLD.detail AS BLOB))
    )
    WHERE name = 'audit_bytes';
END;
""",
)


class Rotation(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    REUSED = "reused"


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    family: str
    subject: str
    role: str
    expires_at: float


class ApiKeyRecord(Record):
    """An API key's record; never its secret (its hash is not shown)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    role: str
    secret_hash: str = Field(exclude=True)
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditEntry(Record):
    """One audited action."""

    model_config = ConfigDict(frozen=True)

    at: float
    subject: str
    role: str
    action: str
    route: str
    resource: str
    outcome: str
    bytes: int = 0
    detail: str = ""


@dataclass(frozen=True)
class ThrottleRow:
    key: bytes  # SHA-256 of the throttle key
    failures: int
    blocked_until: float
    expires_at: float


class ThrottleTable:
    """The throttle's rows inside one open write transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def get(self, key: bytes) -> ThrottleRow | None:
        row = self._db.execute(
            "SELECT key, failures, blocked_until, expires_at FROM throttle WHERE key = ?", (key,)
        ).fetchone()
        return ThrottleRow(*row) if row else None

    def put(self, row: ThrottleRow, *, new: bool) -> None:
        values = (row.failures, row.blocked_until, row.expires_at, row.key)
        if new:
            self._db.execute(
                "INSERT INTO throttle (failures, blocked_until, expires_at, key)"
                " VALUES (?, ?, ?, ?)",
                values,
            )
        else:
            self._db.execute(
                "UPDATE throttle SET failures = ?, blocked_until = ?, expires_at = ? WHERE key = ?",
                values,
            )

    def delete(self, key: bytes) -> None:
        self._db.execute("DELETE FROM throttle WHERE key = ?", (key,))

    def size(self) -> int:
        return _counter(self._db, "throttle_rows")

    def prune(self, now: float) -> int:
        return int(self._db.execute("DELETE FROM throttle WHERE expires_at <= ?", (now,)).rowcount)

    def earliest_expiry(self) -> float | None:
        row = self._db.execute("SELECT MIN(expires_at) FROM throttle").fetchone()
        return None if row is None or row[0] is None else float(row[0])


def _counter(db: sqlite3.Connection, name: str) -> int:
    return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])


class AuthStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_FILE
        self._db = Database(self.path, _MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    # Refresh tokens

    def add_refresh(self, record: RefreshRecord) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, family, subject, role, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (record.token_hash, record.family, record.subject, record.role, record.expires_at),
            )

    def rotate_refresh(self, old_hash: str, new: RefreshRecord) -> Rotation:
        """Marks ``old_hash`` used and stores ``new`` in its family, at once.

        A token that was already used or revoked means a copy is in other
        hands: the whole family is revoked and ``REUSED`` returned.
        """
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT family, used, revoked FROM refresh_tokens WHERE token_hash = ?",
                (old_hash,),
            ).fetchone()
            if row is None:
                return Rotation.UNKNOWN
            family, used, revoked = row
            if used or revoked or family != new.family:
                db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?", (family,))
                return Rotation.REUSED
            db.execute("UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?", (old_hash,))
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, family, subject, role, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (new.token_hash, new.family, new.subject, new.role, new.expires_at),
            )
            return Rotation.ROTATED

    def revoke_refresh(self, token_hash: str, subject: str) -> bool:
        """Revokes one refresh token's family if it belongs to ``subject``."""
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT family FROM refresh_tokens WHERE token_hash = ? AND subject = ?",
                (token_hash, subject),
            ).fetchone()
            if row is None:
                return False
            db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?", (row[0],))
            return True

    # Access tokens

    def revoke_access(self, jti: str, expires_at: float) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO revoked_access (jti, expires_at) VALUES (?, ?)",
                (jti, expires_at),
            )

    def access_revoked(self, jti: str, family: str = "", key_id: str | None = None) -> bool:
        """Whether an access token no longer counts: its own ID was revoked
        (logout), its refresh family was (logout, reuse detection), or the
        API key it was exchanged for is revoked or expired."""
        with self._db.reading() as db:
            if db.execute("SELECT 1 FROM revoked_access WHERE jti = ?", (jti,)).fetchone():
                return True
            revoked_family = db.execute(
                "SELECT 1 FROM refresh_tokens WHERE family = ? AND revoked = 1 LIMIT 1", (family,)
            ).fetchone()
            if revoked_family:
                return True
            if key_id is None:
                return False
            row = db.execute(
                "SELECT revoked_at, expires_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        if row is None:
            return True
        revoked_at, expires_at = row
        return revoked_at is not None or (expires_at is not None and expires_at <= time.time())

    def prune(self, now: float | None = None, audit_retention: float | None = None) -> int:
        """Drops what has expired anyway: revoked access IDs, refresh records,
        throttle entries, and audit entries older than ``audit_retention`` s."""
        now = time.time() if now is None else now
        with self._db.transaction() as db:
            a = db.execute("DELETE FROM revoked_access WHERE expires_at < ?", (now,)).rowcount
            r = db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,)).rowcount
            t = ThrottleTable(db).prune(now)
            old = 0
            if audit_retention is not None:
                cutoff = now - audit_retention
                old = db.execute("DELETE FROM audit WHERE at < ?", (cutoff,)).rowcount
            return int(a + r + t + old)

    # Throttle

    @contextmanager
    def throttle(self) -> Iterator[ThrottleTable]:
        """The throttle's rows in one write transaction: a check and the
        recording of an attempt cannot interleave with another's."""
        with self._db.transaction() as db:
            yield ThrottleTable(db)

    # API keys

    def add_api_key(self, record: ApiKeyRecord) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO api_keys (id, name, role, secret_hash, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.role,
                    record.secret_hash,
                    record.created_at,
                    record.expires_at,
                ),
            )

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._db.reading() as db:
            row = db.execute(
                "SELECT id, name, role, secret_hash, created_at, expires_at, revoked_at"
                " FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        return ApiKeyRecord.from_row(row) if row else None

    def api_keys(self) -> list[ApiKeyRecord]:
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT id, name, role, secret_hash, created_at, expires_at, revoked_at"
                " FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKeyRecord.from_row(row) for row in rows]

    def revoke_api_key(self, key_id: str, now: float) -> bool:
        with self._db.transaction() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
            return cur.rowcount == 1

    # Audit

    def add_audit(self, entry: AuditEntry, max_bytes: int | None = None) -> None:
        """Appends ``entry``; then, over ``max_bytes`` of entries, drops the oldest."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO audit (at, subject, role, action, route, resource, outcome,"
                " bytes, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at,
                    entry.subject,
                    entry.role,
                    entry.action,
                    entry.route,
                    entry.resource,
                    entry.outcome,
                    entry.bytes,
                    entry.detail,
                ),
            )
            while max_bytes is not None and _counter(db, "audit_bytes") > max_bytes:
                db.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id LIMIT 64)"
                )

    def audit_bytes(self) -> int:
        """The audit's size as counted against its limit (its text plus 48 a row)."""
        with self._db.reading() as db:
            return _counter(db, "audit_bytes")

    def audit(
        self, since: float = 0.0, limit: int = 100, *, newest: bool = False
    ) -> list[AuditEntry]:
        """Entries from ``since`` on, oldest first: the first ``limit`` of
        them, or with ``newest`` the last ``limit``."""
        if newest:
            query = (
                "SELECT at, subject, role, action, route, resource, outcome, bytes, detail"
                " FROM (SELECT * FROM audit WHERE at >= ? ORDER BY id DESC LIMIT ?)"
                " ORDER BY id"
            )
        else:
            query = (
                "SELECT at, subject, role, action, route, resource, outcome, bytes, detail"
                " FROM audit WHERE at >= ? ORDER BY id LIMIT ?"
            )
        with self._db.reading() as db:
            rows = db.execute(query, (since, limit)).fetchall()
        return [AuditEntry.from_row(row) for row in rows]
