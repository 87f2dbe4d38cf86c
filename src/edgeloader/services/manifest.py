"""The signed release manifest and the box's version floor (docs/security.md).

When the device trusts a publisher (``EDGELOADER_PUBLISHER_KEY``), every
load and every unlock first fetches ``manifest.json`` and its signature from
the Resource API, fresh, and checks, before any plaintext leaves:

- the Ed25519 signature over the manifest's exact bytes;
- that it has not expired;
- that its ``version`` is not below the highest this box has accepted (the
  floor, kept durably in the state folder; an equal version is fine, a
  higher one raises the floor);
- that the artifact is listed, with the expected ``format`` and ``size``.

The caller then hashes the ciphertext as it streams (:class:`CiphertextHash`)
and releases the last plaintext only when the hash matches. Every refusal is
an :class:`IntegrityError` naming one fixed reason, counted by reason in the
metrics (``edgeloader_integrity_failures_total``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edgeloader import crypto
from edgeloader.errors import ConfigError, EdgeloaderError, IntegrityError
from edgeloader.metrics import Metrics
from edgeloader.storage.files import atomic_write

__all__ = [
    "ARCHIVE_KEY",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "Artifact",
    "CiphertextHash",
    "Manifest",
    "ReleaseGate",
    "load_publisher_key",
    "parse_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.json.sig"
#: The manifest key of the unlock archive; a resource's is ``FOLDER/NAME``.
ARCHIVE_KEY = "images.enc"
FLOOR_FILE = "release_floor"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

Fetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int
    format: int
    # Where its refusals are counted; the gate that admitted it sets it.
    metrics: Metrics | None = field(default=None, compare=False, repr=False)

    def _counted(self, error: IntegrityError) -> IntegrityError:
        if self.metrics is not None:
            self.metrics.integrity_failure(error.reason)
        return error

    def check(self, *, fmt: int, size: int) -> None:
        """The published format and ciphertext size, before any byte leaves."""
        if fmt != self.format:
            raise self._counted(
                IntegrityError("format", f"the manifest says v{self.format}, found v{fmt}")
            )
        if size != self.size:
            raise self._counted(
                IntegrityError("size", f"the manifest says {self.size} bytes, found {size}")
            )


@dataclass(frozen=True)
class Manifest:
    version: int
    expires: float
    artifacts: dict[str, Artifact]


def load_publisher_key(path: Path) -> Ed25519PublicKey:
    """The publisher's Ed25519 public key from a PEM file, or a ConfigError."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"EDGELOADER_PUBLISHER_KEY: cannot read a PEM key from {path}: {exc}"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"EDGELOADER_PUBLISHER_KEY: {path} is not an Ed25519 public key")
    return key


def _malformed(what: str) -> IntegrityError:
    # A signed but unreadable manifest cannot be used, as if it were missing.
    return IntegrityError("unavailable", f"malformed manifest: {what}")


def parse_manifest(raw: bytes) -> Manifest:
    """Parses a manifest whose signature has been verified."""
    try:
        doc: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed("not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise _malformed("not a JSON object")
    version, expires, artifacts = doc.get("version"), doc.get("expires"), doc.get("artifacts")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _malformed("version must be an integer >= 1")
    if not isinstance(expires, str) or not _RFC3339_UTC.match(expires):
        raise _malformed("expires must be RFC 3339 in UTC (…Z)")
    try:
        expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise _malformed("expires is not a valid time") from None
    if not isinstance(artifacts, dict):
        raise _malformed("artifacts must be an object")
    parsed = {}
    for key, entry in artifacts.items():
        if not isinstance(entry, dict):
            raise _malformed(f"artifact {key!r} must be an object")
        sha, size, fmt = entry.get("sha256"), entry.get("size"), entry.get("format")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise _malformed(f"artifact {key!r}: sha256 must be 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _malformed(f"artifact {key!r}: size must be a non-negative integer")
        if fmt not in (1, 2):
            raise _malformed(f"artifact {key!r}: format must be 1 or 2")
        parsed[str(key)] = Artifact(sha, size, int(fmt))
    return Manifest(version, expires_at, parsed)


def _verify_signature(key: Ed25519PublicKey, manifest: bytes, signature_file: bytes) -> None:
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
        key.verify(signature, manifest)
    except (binascii.Error, ValueError, InvalidSignature):
        raise IntegrityError("bad-signature") from None


class VersionFloor:
    """The highest manifest version this box has accepted, kept durably."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FLOOR_FILE
        self._lock = asyncio.Lock()

    def _read(self) -> int:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            # A damaged floor must not silently become 0 (a rollback window).
            raise IntegrityError("rollback", f"the version floor is unreadable: {exc}") from None

    async def admit(self, version: int) -> None:
        """Refuses a version below the floor; raises the floor to a higher one."""
        async with self._lock:
            floor = await asyncio.to_thread(self._read)
            if version < floor:
                raise IntegrityError("rollback", f"version {version} is below {floor}")
            if version > floor:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                await asyncio.to_thread(atomic_write, self.path, f"{version}\n".encode())
                log.info("release floor raised from %d to %d", floor, version)


class ReleaseGate:
    """The device's side of the manifest: disabled without a publisher key."""

    def __init__(
        self, key: Ed25519PublicKey | None, state_dir: Path, metrics: Metrics | None = None
    ) -> None:
        self.key = key
        self.metrics = metrics
        self.floor = VersionFloor(state_dir)
        if key is None:
            log.warning(
                "EDGELOADER_PUBLISHER_KEY is not set: loads and unlocks are not checked "
                "against a signed release manifest"
            )

    @classmethod
    def from_settings(
        cls, publisher_key: Path | None, state_dir: Path, metrics: Metrics | None = None
    ) -> ReleaseGate:
        key = load_publisher_key(publisher_key) if publisher_key else None
        return cls(key, state_dir, metrics)

    @property
    def enabled(self) -> bool:
        return self.key is not None

    async def artifact(self, fetch: Fetch, name: str) -> Artifact | None:
        """The verified manifest's entry for ``name``; None when disabled.

        ``fetch(file_name)`` returns a file served like ``cdn.yaml``.
        """
        try:
            return await self._artifact(fetch, name)
        except IntegrityError as exc:
            if self.metrics is not None:
                self.metrics.integrity_failure(exc.reason)
            raise

    async def _artifact(self, fetch: Fetch, name: str) -> Artifact | None:
        if self.key is None:
            return None
        try:
            raw, signature = await asyncio.gather(fetch(MANIFEST_FILE), fetch(SIGNATURE_FILE))
        except EdgeloaderError as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise IntegrityError("unavailable", exc.detail) from None
        _verify_signature(self.key, raw, signature)
        manifest = parse_manifest(raw)
        if manifest.expires <= time.time():
            raise IntegrityError("expired")
        await self.floor.admit(manifest.version)
        entry = manifest.artifacts.get(name)
        if entry is None:
            raise IntegrityError("not-listed", name)
        return replace(entry, metrics=self.metrics)


class CiphertextHash:
    """SHA-256 of a ciphertext as it streams, compared with the manifest's."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._hash = crypto.Sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def verify(self) -> None:
        if self._hash.hexdigest() != self.artifact.sha256:
            raise self.artifact._counted(IntegrityError("hash"))
