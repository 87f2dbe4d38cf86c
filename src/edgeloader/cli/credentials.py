"""The CLI's token pairs: one private file, one entry per server URL.

``$XDG_CONFIG_HOME/edgeloader/credentials.json`` (``~/.config/...`` when the
variable is unset), mode 0600 in a 0700 folder, always replaced whole with
:func:`edgeloader.storage.files.atomic_write`. It holds tokens, never a
password::

    {"servers": {"http://127.0.0.1:8080": {"accessToken": "...",
      "refreshToken": "...", "expiresAt": 1795300900.0, "role": "Admin",
      "user": "admin@example.org"}}}

Refresh tokens rotate and a reused one revokes its whole family, so two
commands that find the same expired token must not both refresh it: every
change happens under an exclusive lock (``.credentials.lock`` beside the
file), and a refresher first re-reads the file to see whether another
process already did the work (:meth:`CredentialStore.locked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgeloader.errors import ConfigError
from edgeloader.storage.files import atomic_write

__all__ = [
    "CredentialStore",
    "SavedTokens",
    "config_dir",
    "normalize_url",
]

FILE_NAME = "credentials.json"
LOCK_NAME = ".credentials.lock"
#: An access token this close to its expiry is refreshed before use.
EXPIRY_MARGIN = 30.0


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/edgeloader``, else ``~/.config/edgeloader``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "").strip()
    if base and os.path.isabs(base):
        return Path(base) / "edgeloader"
    home = env.get("HOME", "").strip() or str(Path.home())
    return Path(home) / ".config" / "edgeloader"


def normalize_url(url: str) -> str:
    """The server's URL as a key: scheme and host in lower case, no trailing
    slash, no query. Anything but an http(s) URL is a usage error."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the server URL must be http(s)://HOST[:PORT], got {url!r}")
    netloc = parts.hostname.lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class SavedTokens:
    """An access token, its rotating refresh token and when the access token expires."""

    access_token: str
    refresh_token: str
    expires_at: float
    role: str = ""
    user: str = ""

    @classmethod
    def from_answer(cls, body: Any, *, user: str = "", now: float | None = None) -> SavedTokens:
        """From a ``{"accessToken", "refreshToken", "expiresIn", "role"}`` answer."""
        if not isinstance(body, dict):
            raise ValueError("the answer is not a token pair")
        access, refresh = body.get("accessToken"), body.get("refreshToken")
        expires_in = body.get("expiresIn")
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
            raise ValueError("the answer carries no token pair")
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise ValueError("the answer carries no expiresIn")
        now = time.time() if now is None else now
        role = body.get("role")
        return cls(
            access, refresh, now + float(expires_in), role if isinstance(role, str) else "", user
        )

    def expired(self, now: float | None = None, margin: float = EXPIRY_MARGIN) -> bool:
        return (time.time() if now is None else now) >= self.expires_at - margin

    def as_json(self) -> dict[str, Any]:
        raw = asdict(self)
        return {
            "accessToken": raw["access_token"],
            "refreshToken": raw["refresh_token"],
            "expiresAt": raw["expires_at"],
            "role": raw["role"],
            "user": raw["user"],
        }

    @classmethod
    def from_json(cls, raw: Any) -> SavedTokens | None:
        """An entry of the file, or None when it is not one (it is then ignored)."""
        if not isinstance(raw, dict):
            return None
        access, refresh, expires = (
            raw.get("accessToken"),
            raw.get("refreshToken"),
            raw.get("expiresAt"),
        )
        if not (isinstance(access, str) and isinstance(refresh, str)):
            return None
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            return None
        role, user = raw.get("role", ""), raw.get("user", "")
        return cls(
            access,
            refresh,
            float(expires),
            role if isinstance(role, str) else "",
            user if isinstance(user, str) else "",
        )


class CredentialStore:
    """The credentials file. Reads are lock-free (the file is replaced whole);
    changes go through :meth:`locked`."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or config_dir()
        self.path = self.folder / FILE_NAME
        self._lock_path = self.folder / LOCK_NAME
        self._warned = False

    # -- reading -----------------------------------------------------------

    def _servers(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        try:
            self._keep_private(fd)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ConfigError(
                f"{self.path} is not valid JSON; remove it and run `edgeloader login` again"
            ) from None
        servers = doc.get("servers") if isinstance(doc, dict) else None
        return servers if isinstance(servers, dict) else {}

    def _keep_private(self, fd: int) -> None:
        """A file that others may read is made private again, with a warning."""
        mode = os.fstat(fd).st_mode
        if stat.S_IMODE(mode) & 0o077:
            os.fchmod(fd, 0o600)
            if not self._warned:
                self._warned = True
                print(
                    f"edgeloader: warning: {self.path} was readable by others "
                    f"(mode {stat.S_IMODE(mode):04o}); made it 0600",
                    file=sys.stderr,
                )

    def get(self, url: str) -> SavedTokens | None:
        return SavedTokens.from_json(self._servers().get(normalize_url(url)))

    def urls(self) -> list[str]:
        return sorted(self._servers())

    # -- changing (under the lock) -----------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the exclusive lock of the file (blocking; across processes)."""
        self._make_folder()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def put(self, url: str, pair: SavedTokens) -> None:
        """Stores ``pair`` for ``url``; call under :meth:`locked`."""
        servers = self._servers()
        servers[normalize_url(url)] = pair.as_json()
        self._write(servers)

    def remove(self, url: str) -> bool:
        """Forgets ``url``'s pair; call under :meth:`locked`. True if there was one."""
        servers = self._servers()
        if servers.pop(normalize_url(url), None) is None:
            return False
        self._write(servers)
        return True

    def _write(self, servers: dict[str, Any]) -> None:
        self._make_folder()
        data = json.dumps({"servers": servers}, indent=2, sort_keys=True) + "\n"
        atomic_write(self.path, data.encode(), 0o600)

    def _make_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
