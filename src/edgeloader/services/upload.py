"""Upload: plaintext stream → encrypt → split → CDN (big) → API (small).

The whole flow lives here so that every caller (the ``/upload`` route, the
publishing CLI, the dev stack, the benchmarks) gets the same rules:

1. *stage*: encrypt, split (``crypto.parts``) and upload the big part;
2. *publish*: post the small part, which makes the resource loadable;
3. *discard*: if anything fails after staging, remove the big part again,
   so a failed upload never leaves a half resource behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from edgeloader import crypto
from edgeloader.errors import CdnError
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uploaded:
    folder: str
    name: str
    plaintext_bytes: int
    small_bytes: int
    big_bytes: int


async def upload_resource(
    cdn: Cdn,
    api: ResourceApiClient,
    folder: str,
    name: str,
    plaintext: AsyncIterable[bytes],
    *,
    part_size: int,
    fmt: int = 1,
    before_publish: Callable[[], Awaitable[None]] | None = None,
) -> Uploaded:
    """Stages, then publishes; on any failure after staging, discards.

    ``api`` must be logged in as a user that may upload. ``fmt`` is the
    container format of the resource's ciphertext (1 or 2).

    ``before_publish`` runs between the two steps (the web layer reads the
    rest of its form there); if it raises, nothing is published.
    """
    counted = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal counted
        async for chunk in plaintext:
            counted += len(chunk)
            yield chunk

    ciphertext = crypto.encrypt_chunks(crypto.resource_key(), counting(), fmt)
    small, big = await crypto.split_ciphertext(ciphertext)
    big_key = crypto.big_name(name)
    big_bytes = await cdn.upload(folder, big_key, big, part_size)
    try:
        if before_publish is not None:
            await before_publish()
        await api.upload_part(folder, crypto.small_name(name), small)
    except BaseException:
        await _discard(cdn, folder, big_key)
        raise
    result = Uploaded(folder, name, counted, len(small), big_bytes)
    log.info(
        "uploaded %s/%s: %d plaintext bytes, small %d + big %d",
        folder,
        name,
        counted,
        len(small),
        big_bytes,
    )
    return result


async def _discard(cdn: Cdn, folder: str, key: str) -> None:
    """Removes a staged big part again (best effort: the first error matters more)."""
    try:
        await cdn.delete(folder, key)
    except CdnError:
        log.warning("could not remove staged %s/%s", folder, key, exc_info=True)
