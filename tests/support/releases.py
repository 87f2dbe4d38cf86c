"""Publishing on the test stack, as a publisher would: v2 resources written
by the independent oracle, their segment lists (hashlib, from the text),
and signed release manifests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edgeloader import crypto
from edgeloader.services.manifest import Artifact
from edgeloader_publisher.release import Release, generate_keypair, load_private_key
from tests.support.harness.s3 import s3_client
from tests.support.reference import oracle_encrypt, segment_list
from tests.support.stack import Stack, pattern

__all__ = [
    "SEGMENT",
    "Publisher",
    "artifact_of",
    "cached_entries",
    "forge_v1",
    "forge_v2",
    "publish_segments",
    "publish_v2",
    "read_ciphertext",
]

#: The segment size of the tests' releases: the smallest, so that small
#: resources have many segments.
SEGMENT = 1 << 16


def publish_v2(stack: Stack, name: str, plaintext: bytes) -> bytes:
    """Publishes ``plaintext`` as a v2 resource, written by the independent
    oracle (not the core), split by the documented rule; returns the ct."""
    ct = oracle_encrypt(crypto.resource_key(), plaintext, salt=pattern(16), prefix=pattern(7))
    cut = min(3072, len(ct) * 3 // 10)
    s3_client(stack.s3_endpoint).put_object(Bucket=stack.bucket, Key=f"{name}.big", Body=ct[cut:])
    path = stack.api_dir / "resources" / stack.bucket / f"{name}.small"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ct[:cut])
    return ct


def read_ciphertext(stack: Stack, name: str, folder: str | None = None) -> bytes:
    """A published resource's whole ciphertext, small ‖ big, as stored."""
    folder = folder or stack.bucket
    small = (stack.api_dir / "resources" / folder / f"{name}.small").read_bytes()
    big = s3_client(stack.s3_endpoint).get_object(Bucket=folder, Key=f"{name}.big")
    return small + bytes(big["Body"].read())


def publish_segments(
    stack: Stack, name: str, ct: bytes, segment: int = SEGMENT, folder: str | None = None
) -> bytes:
    """Puts the segment list of ``ct`` where the Resource API serves it:
    beside the small part, or (``folder=""``) beside the manifest."""
    listed = segment_list(ct, segment)
    if folder == "":
        path = stack.api_dir / f"{name}.segments"
    else:
        path = stack.api_dir / "resources" / (folder or stack.bucket) / f"{name}.segments"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(listed)
    return listed


def cached_entries(stack: Stack, name: str) -> list[Path]:
    folder = stack.tmp / "cache" / stack.bucket / name
    return list(folder.iterdir()) if folder.exists() else []


class Publisher:
    """A publisher key pair and a way to release manifests into the API's folder."""

    def __init__(self, stack: Stack, folder: Path) -> None:
        self.stack = stack
        self.private_path, self.public = generate_keypair(folder)
        self.private = load_private_key(self.private_path)

    def release(
        self,
        version: int,
        artifacts: dict[str, Artifact],
        *,
        expires_in: timedelta = timedelta(days=1),
        sign_with: Path | None = None,
    ) -> None:
        key = load_private_key(sign_with) if sign_with else self.private
        expires = (datetime.now(UTC) + expires_in).replace(microsecond=0)
        Release(version, expires, artifacts).write(key, self.stack.api_dir)

    async def start_loader(self, **extra: Any) -> None:
        await self.stack.start_loader(self.stack.settings(publisher_key=self.public, **extra))
        await self.stack.login()


def artifact_of(ct: bytes, fmt: int = 2, segment: int = SEGMENT) -> Artifact:
    """The manifest entry of ``ct``, computed with hashlib from the text."""
    listed = segment_list(ct, segment)
    return Artifact(
        hashlib.sha256(ct).hexdigest(),
        len(ct),
        fmt,
        segment,
        hashlib.sha256(listed).hexdigest(),
    )


# -- forgeries: what a party that controls the CDN or the box's disk can do ---------

CHUNK = 1 << 16


def forge_v2(ct: bytes, data: bytes, from_chunk: int) -> tuple[bytes, bytes]:
    """The attack: the genuine header (anyone can read it from the small
    part) and the attacker's plaintext from chunk ``from_chunk`` on, sealed
    under the public resource key. Every chunk's tag verifies. Returns
    (forged ciphertext, forged plaintext)."""
    forged = data[: from_chunk * CHUNK] + bytes([0xA5]) * (len(data) - from_chunk * CHUNK)
    salt, prefix = ct[8:24], ct[24:31]
    out = oracle_encrypt(crypto.resource_key(), forged, s=ct[6], salt=salt, prefix=prefix)
    same = 32 + from_chunk * (CHUNK + 16)  # the chunks before it are the genuine ones
    assert len(out) == len(ct)
    assert out[:same] == ct[:same]
    return out, forged


def forge_v1(ct: bytes, data: bytes, from_block: int) -> tuple[bytes, bytes]:
    """The same attack on v1: CBC under the public resource key, continued
    from the genuine ciphertext block before ``from_block``, with valid
    padding. Returns (forged ciphertext, forged plaintext)."""
    forged = data[: from_block * 16] + bytes([0x5A]) * (len(data) - from_block * 16)
    padder = padding.PKCS7(128).padder()
    tail = padder.update(forged[from_block * 16 :]) + padder.finalize()
    iv = ct[from_block * 16 : from_block * 16 + 16]  # the ciphertext block before it
    enc = Cipher(algorithms.AES(crypto.resource_key()), modes.CBC(iv)).encryptor()
    out = ct[: 16 + from_block * 16] + enc.update(tail) + enc.finalize()
    assert len(out) == len(ct)
    return out, forged
