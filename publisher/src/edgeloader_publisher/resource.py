"""Publishing a resource: encrypt, split, big part to the CDN, small part to
the Resource API, through the same upload service the loader's ``/upload``
uses (``edgeloader.services.upload``), so both follow the same rules.

The publisher is not a device: it logs in as an uploader and fetches the
CDN settings with a fixed hardware string instead of a device fingerprint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edgeloader.publishing import (
    Cdn,
    CdnOverrides,
    Published,
    ResourceApiClient,
    Uploader,
    crypto,
    fetch_cdn_config,
    read_file_chunks,
)

__all__ = ["PUBLISHER_HARDWARE", "PublishTarget", "publish_file"]

#: What the publisher sends as ``hardware``: the API re-encrypts ``cdn.yaml``
#: for whatever it is told, and a publisher has no device to fingerprint.
PUBLISHER_HARDWARE = "edgeloader-publisher"
CHUNK_SIZE = 1 << 20
PART_SIZE = 8 << 20


@dataclass(frozen=True)
class PublishTarget:
    api_url: str
    email: str
    password: str
    cdn: CdnOverrides = field(default_factory=CdnOverrides)
    timeout: float = 30.0


async def publish_file(
    target: PublishTarget,
    path: Path,
    folder: str,
    name: str,
    progress: Callable[[int], None] | None = None,
    fmt: int = 2,
    segment: int = crypto.SEGMENT_DEFAULT,
) -> Published:
    """Logs in and publishes one file in format ``fmt`` (v2 unless a fleet
    still runs Azaion-compatible loaders), with its segment list of
    ``segment``-byte segments; ``progress`` gets plaintext bytes read."""

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in read_file_chunks(path, CHUNK_SIZE):
            if progress is not None:
                progress(len(chunk))
            yield chunk

    async with aiohttp.ClientSession() as http:
        api = ResourceApiClient(target.api_url, http, timeout=target.timeout)
        await api.login(target.email, target.password)
        key = crypto.api_key(target.email, target.password, PUBLISHER_HARDWARE)
        config = await fetch_cdn_config(api, key, PUBLISHER_HARDWARE, target.cdn)
        async with Cdn(config) as cdn:
            return await Uploader().upload(
                cdn, api, folder, name, chunks(), part_size=PART_SIZE, fmt=fmt, segment=segment
            )
