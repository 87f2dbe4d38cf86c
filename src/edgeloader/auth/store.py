"""The auth store: SQLite in the state folder.

It holds refresh-token records, revoked access-token IDs, API keys and the
audit log, and never a raw token or key: tokens are stored as SHA-256
hashes and API keys as the hash of their secret part. Every change is one
transaction in WAL mode with full sync, so a crash at any point leaves the
database as it was before or after that change, never in between.

The methods are blocking and thread-safe; async code calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloader.storage.sqlite import Database

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


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: str
    secret_hash: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, Any]:
        """Everything but the secret's hash."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "revokedAt": self.revoked_at,
        }


@dataclass(frozen=True)
class AuditEntry:
    at: float
    subject: str
    role: str
    action: str
    route: str
    resource: str
    outcome: str
    bytes: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "subject": self.subject,
            "role": self.role,
            "action": self.action,
            "route": self.route,
            "resource": self.resource,
            "outcome": self.outcome,
            "bytes": self.bytes,
            "detail": self.detail,
        }


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

    def access_revoked(self, jti: str) -> bool:
        with self._db.reading() as db:
            row = db.execute("SELECT 1 FROM revoked_access WHERE jti = ?", (jti,))
            return row.fetchone() is not None

    def prune(self, now: float | None = None) -> int:
        """Drops what has expired anyway: revoked access IDs, refresh records."""
        now = time.time() if now is None else now
        with self._db.transaction() as db:
            a = db.execute("DELETE FROM revoked_access WHERE expires_at < ?", (now,)).rowcount
            r = db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,)).rowcount
            return int(a + r)

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
        return ApiKeyRecord(*row) if row else None

    def api_keys(self) -> list[ApiKeyRecord]:
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT id, name, role, secret_hash, created_at, expires_at, revoked_at"
                " FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKeyRecord(*row) for row in rows]

    def revoke_api_key(self, key_id: str, now: float) -> bool:
        with self._db.transaction() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
            return cur.rowcount == 1

    # Audit

    def add_audit(self, entry: AuditEntry) -> None:
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

    def audit(self, since: float = 0.0, limit: int = 100) -> list[AuditEntry]:
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT at, subject, role, action, route, resource, outcome, bytes, detail"
                " FROM audit WHERE at >= ? ORDER BY id LIMIT ?",
                (since, limit),
            ).fetchall()
        return [AuditEntry(*row) for row in rows]
