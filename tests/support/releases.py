"""Publishing on the test stack, as a publisher would: v2 resources written
by the independent oracle, and signed release manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgeloader import crypto
from edgeloader.services.manifest import Artifact
from edgeloader_publisher.release import Release, generate_keypair, load_private_key
from tests.support.harness.s3 import s3_client
from tests.support.reference import oracle_encrypt
from tests.support.stack import Stack, pattern

__all__ = ["Publisher", "artifact_of", "cached_entries", "publish_v2"]


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


def cached_entries(stack: Stack, name: str) -> list[Path]:
    folder = stack.tmp / "cache" / stack.bucket / name
    return list(folder.iterdir()) if folder.exists() else []


class Publisher:
    """A publisher key pair and a way to release manifests into the API's folder."""

    def __init__(self, stack: Stack, folder: Path) -> None:
        self.stack = stack
        _, self.public = generate_keypair(folder)
        self.private = load_private_key(folder / "publisher_key.pem")

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


def artifact_of(ct: bytes, fmt: int = 2) -> Artifact:
    digest = crypto.Sha256()
    digest.update(ct)
    return Artifact(digest.hexdigest(), len(ct), fmt)
