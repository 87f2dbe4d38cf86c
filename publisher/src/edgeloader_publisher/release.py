"""The signed release manifest, publisher side (docs/security.md).

``manifest.json`` lists each artifact's SHA-256, size, format, segment
size and the SHA-256 of its segment list, computed over its whole published
ciphertext: a resource's ``small ‖ big`` as stored (before the API's
per-user re-encryption), or ``images.enc``. The segment list itself
(``NAME.segments``) is published beside the small part, or beside the
manifest for the archive. The manifest is signed with the publisher's
Ed25519 key; boxes that trust the public key refuse anything it does not
list, any version below one they accepted, and any segment whose hash is
not in the list.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloader.publishing import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Artifact,
    Cdn,
    ConfigError,
    ResourceApiClient,
    atomic_write,
    crypto,
    fetch_cdn_config,
    read_file_chunks,
)
from edgeloader_publisher.resource import CHUNK_SIZE, PUBLISHER_HARDWARE, PublishTarget

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "Listed",
    "Release",
    "archive_artifact",
    "generate_keypair",
    "load_private_key",
    "resource_artifact",
]

PRIVATE_KEY_FILE = "publisher_key.pem"
PUBLIC_KEY_FILE = "publisher_key.pub.pem"


def generate_keypair(folder: Path) -> tuple[Path, Path]:
    """Writes a new Ed25519 key pair into ``folder``: the private key 0600,
    the public key (what boxes trust) 0644. Never overwrites a private key."""
    private = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(private_path, pem, 0o600, exclusive=True)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(public_path, public, 0o644)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class Release:
    version: int
    expires: datetime
    artifacts: dict[str, Artifact]

    def manifest(self) -> bytes:
        """``manifest.json``: the exact bytes that are signed."""
        doc = {
            "version": self.version,
            "expires": self.expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "artifacts": {
                key: {
                    "sha256": a.sha256,
                    "size": a.size,
                    "format": a.format,
                    "segment": a.segment,
                    "segments": a.segments,
                }
                for key, a in sorted(self.artifacts.items())
            },
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def write(
        self, key: Ed25519PrivateKey, folder: Path, lists: dict[str, bytes] | None = None
    ) -> tuple[Path, Path]:
        """Signs and writes both files into ``folder``, the signature last,
        so a reader never pairs a new manifest with an old signature for long.
        ``lists`` are segment lists to write there first (``images.enc.segments``)."""
        raw = self.manifest()
        signature = base64.b64encode(key.sign(raw)) + b"\n"
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, data in (lists or {}).items():
            atomic_write(folder / file_name, data, 0o644)
        manifest_path, signature_path = folder / MANIFEST_FILE, folder / SIGNATURE_FILE
        atomic_write(manifest_path, raw, 0o644)
        atomic_write(signature_path, signature, 0o644)
        return manifest_path, signature_path


@dataclass(frozen=True)
class Listed:
    """An artifact's manifest entry and its segment list."""

    artifact: Artifact
    segments: bytes


async def _listed(chunks: AsyncIterator[bytes], segment: int) -> Listed:
    """One pass over a ciphertext: its SHA-256, size, format and segment list."""
    digest, hasher = crypto.Sha256(), crypto.SegmentHasher(segment)
    size, start = 0, b""
    async for chunk in chunks:
        if len(start) < crypto.FORMAT_PREFIX:
            start += chunk[: crypto.FORMAT_PREFIX - len(start)]
        digest.update(chunk)
        hasher.update(chunk)
        size += len(chunk)
    segments = hasher.finish()
    fmt = crypto.detect_format(start)
    artifact = Artifact(
        digest.hexdigest(), size, fmt, segment, hashlib.sha256(segments).hexdigest()
    )
    return Listed(artifact, segments)


async def archive_artifact(path: Path, segment: int = crypto.SEGMENT_DEFAULT) -> Listed:
    """The manifest entry and segment list of a local ciphertext file such
    as ``images.enc`` (its list is published as ``images.enc.segments``)."""
    return await _listed(read_file_chunks(path, CHUNK_SIZE), segment)


async def resource_artifact(
    target: PublishTarget, folder: str, name: str, segment: int = crypto.SEGMENT_DEFAULT
) -> Listed:
    """The manifest entry of a published resource, read back as a box reads
    it: the small part from the API (its transport encryption removed) and
    the big part from the CDN, hashed as one ciphertext. Its segment list is
    published beside its small part, so that a resource published before
    segment lists existed gets one without being encrypted again."""
    async with aiohttp.ClientSession() as http:
        api = ResourceApiClient(target.api_url, http, timeout=target.timeout)
        await api.login(target.email, target.password)
        key = crypto.api_key(target.email, target.password, PUBLISHER_HARDWARE)
        wire = await api.fetch_part(folder, crypto.small_name(name), PUBLISHER_HARDWARE)
        small = crypto.decrypt_v1(key, wire)
        config = await fetch_cdn_config(api, key, PUBLISHER_HARDWARE, target.cdn)
        async with Cdn(config) as cdn:
            body = await cdn.get(folder, crypto.big_name(name))
            try:

                async def whole() -> AsyncIterator[bytes]:
                    yield small
                    async for chunk in body.chunks(CHUNK_SIZE):
                        yield chunk

                listed = await _listed(whole(), segment)
            finally:
                body.close()
        await api.upload_part(folder, crypto.segments_name(name), listed.segments)
        return listed
