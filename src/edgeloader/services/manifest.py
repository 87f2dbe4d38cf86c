"""The signed release manifest, its segment lists and the box's version
floor (docs/security.md, "The signed release manifest").

With a publisher key (``EDGELOADER_PUBLISHER_KEY``), every load, pre-staging,
unlock and model mount first asks :class:`ReleaseGate` for the artifact's
:class:`Release`: the manifest fetched fresh and checked (signature, expiry,
version floor, the artifact listed), then the artifact's segment list,
checked against the manifest. The flow then checks the format and size
before its first byte (:meth:`Release.check`) and passes the ciphertext
through :meth:`Release.gate`, which releases it only in segments whose
SHA-256 matched their entry: no plaintext is ever made from bytes that
were not verified.

Every refusal is an :class:`IntegrityError` naming one fixed reason, counted
once by reason in the metrics (``edgeloader_integrity_failures_total``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edgeloader import crypto
from edgeloader.errors import (
    ConfigError,
    EdgeloaderError,
    IntegrityError,
    NotAuthenticated,
    NotFound,
)
from edgeloader.metrics import Metrics
from edgeloader.storage.files import atomic_write

__all__ = [
    "ARCHIVE_KEY",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "Artifact",
    "Manifest",
    "Release",
    "ReleaseGate",
    "Verified",
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
_KEPT_LISTS = 64
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@dataclass(frozen=True)
class Artifact:
    """A manifest's entry: the whole published ciphertext's SHA-256 and
    size, its format, and its segment size and segment list's SHA-256."""

    sha256: str
    size: int
    format: int
    segment: int
    segments: str


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
        parsed[str(key)] = _artifact(str(key), entry)
    return Manifest(version, expires_at, parsed)


def _artifact(key: str, entry: dict[str, Any]) -> Artifact:
    sha, size, fmt = entry.get("sha256"), entry.get("size"), entry.get("format")
    segment, segments = entry.get("segment"), entry.get("segments")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise _malformed(f"artifact {key!r}: sha256 must be 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _malformed(f"artifact {key!r}: size must be a non-negative integer")
    if fmt not in (1, 2) or isinstance(fmt, bool):
        raise _malformed(f"artifact {key!r}: format must be 1 or 2")
    if segment is None or segments is None:
        raise _malformed(f"artifact {key!r}: segment and segments are required")
    if (
        not isinstance(segment, int)
        or isinstance(segment, bool)
        or not crypto.SEGMENT_MIN <= segment <= crypto.SEGMENT_MAX
        or segment & (segment - 1)
    ):
        raise _malformed(f"artifact {key!r}: segment must be a power of two from 2^16 to 2^24")
    if not isinstance(segments, str) or not _SHA256.match(segments):
        raise _malformed(f"artifact {key!r}: segments must be 64 lowercase hex digits")
    return Artifact(sha, size, int(fmt), segment, segments)


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


Fetch = Callable[[str, str], Awaitable[bytes]]


class ReleaseGate:
    """The device's side of the manifest: disabled without a publisher key."""

    def __init__(
        self, key: Ed25519PublicKey | None, state_dir: Path, metrics: Metrics | None = None
    ) -> None:
        self.key = key
        self.metrics = metrics
        self.floor = VersionFloor(state_dir)
        # Segment lists by their SHA-256: checked against the manifest, so a
        # list kept here is as good as one fetched again.
        self._lists: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        if key is None:
            log.warning(
                "EDGELOADER_PUBLISHER_KEY is not set: content from the CDN is not "
                "authenticated against a forger (no signed release manifest is checked)"
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

    def count(self, error: IntegrityError) -> IntegrityError:
        """Counts a refusal in the metrics; returns it, to be raised."""
        if self.metrics is not None:
            self.metrics.integrity_failure(error.reason)
        return error

    async def release(self, fetch: Fetch, folder: str, name: str) -> Release | None:
        """``folder/name`` as the verified manifest lists it, with its segment
        list checked; None when no publisher is trusted.

        ``fetch(folder, file_name)`` returns a file served like ``cdn.yaml``.
        The unlock archive is ``("", ARCHIVE_KEY)``.
        """
        if self.key is None:
            return None
        try:
            return await self._release(self.key, fetch, folder, name)
        except IntegrityError as exc:
            raise self.count(exc) from None

    async def _release(
        self, key: Ed25519PublicKey, fetch: Fetch, folder: str, name: str
    ) -> Release:
        try:
            raw, signature = await asyncio.gather(
                fetch("", MANIFEST_FILE), fetch("", SIGNATURE_FILE)
            )
        except EdgeloaderError as exc:
            if isinstance(exc, IntegrityError | NotAuthenticated):
                raise  # a device not logged in is told so, not a manifest fault
            raise IntegrityError("unavailable", exc.detail) from None
        _verify_signature(key, raw, signature)
        manifest = parse_manifest(raw)
        if manifest.expires <= time.time():
            raise IntegrityError("expired")
        await self.floor.admit(manifest.version)
        listed = f"{folder}/{name}" if folder else name
        artifact = manifest.artifacts.get(listed)
        if artifact is None:
            raise IntegrityError("not-listed", listed)
        segments = await self._segment_list(fetch, folder, name, artifact)
        return Release(listed, artifact, segments, self)

    async def _segment_list(
        self, fetch: Fetch, folder: str, name: str, artifact: Artifact
    ) -> bytes:
        kept = self._lists.get(artifact.segments)
        if kept is not None:
            self._lists.move_to_end(artifact.segments)
            found = kept
        else:
            file_name = crypto.segments_name(name)
            try:
                found = await fetch(folder, file_name)
            except NotFound:
                where = f"{folder}/{file_name}" if folder else file_name
                raise IntegrityError("segments", f"{where} is missing upstream") from None
            except NotAuthenticated:
                raise
            except EdgeloaderError as exc:
                raise IntegrityError("unavailable", exc.detail) from None
        # The length is checked for every artifact: one list may be named by
        # another artifact whose size does not fit it.
        expected = 32 * crypto.segment_count(artifact.size, artifact.segment)
        if len(found) != expected:
            raise IntegrityError(
                "segments", f"the list has {len(found)} bytes, the manifest implies {expected}"
            )
        if kept is None:
            if hashlib.sha256(found).hexdigest() != artifact.segments:
                raise IntegrityError("segments", "the list does not match the manifest")
            self._lists[artifact.segments] = found
            while len(self._lists) > _KEPT_LISTS:
                self._lists.popitem(last=False)
        return found


class Release:
    """An artifact of a verified manifest whose segment list matched it."""

    def __init__(self, listed: str, artifact: Artifact, segments: bytes, gate: ReleaseGate) -> None:
        self.listed = listed
        self.artifact = artifact
        self.segments = segments
        self._gate = gate

    @property
    def identity(self) -> str:
        """The artifact's identity: the whole ciphertext's SHA-256, from the
        manifest (not computed again: the segments cover every byte)."""
        return self.artifact.sha256

    def check(self, *, fmt: int, size: int) -> None:
        """The published format and ciphertext size, before any byte leaves."""
        a = self.artifact
        if fmt != a.format:
            raise self._gate.count(
                IntegrityError("format", f"the manifest says v{a.format}, found v{fmt}")
            )
        if size != a.size:
            raise self._gate.count(
                IntegrityError("size", f"the manifest says {a.size} bytes, found {size}")
            )

    def gate(self, start: int = 0) -> Verified:
        """A pass-through for the ciphertext from ``start`` (a segment
        boundary) that releases only whole verified segments."""
        a = self.artifact
        return Verified(crypto.SegmentGate(a.segment, a.size, self.segments, start), self._gate)


class Verified:
    """Ciphertext released segment by segment once each one's SHA-256
    matched (``crypto.SegmentGate``); a mismatch is counted once."""

    def __init__(self, gate: crypto.SegmentGate, counter: ReleaseGate) -> None:
        self._gate = gate
        self._counter = counter

    @property
    def position(self) -> int:
        """The ciphertext offset up to which everything has been released."""
        return self._gate.position

    def update(self, data: bytes | memoryview) -> bytes:
        try:
            return self._gate.update(data)
        except IntegrityError as exc:
            raise self._counter.count(exc) from None

    def finish(self) -> None:
        try:
            self._gate.finish()
        except IntegrityError as exc:
            raise self._counter.count(exc) from None
