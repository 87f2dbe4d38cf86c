"""Upload: plaintext stream → encrypt → split → CDN (big) → API (small).

The whole flow lives here so that every caller (the ``/upload`` route, the
publishing CLI, the dev stack, the benchmarks) gets the same rules:

1. *stage*: encrypt, split (``crypto.parts``) and upload the big part under
   a staging key, so a resource already published under the name stays
   whole and loadable while the new one streams in;
2. *publish*: post the small part; once the Resource API has accepted it,
   copy the staged big part over the old one on the CDN itself (no bytes
   through the box) and remove the staging object;
3. *discard*: if anything fails before the small part is accepted, remove
   the staged object; the previous resource is untouched.

From the moment the small part is being posted, the upload finishes even
if the caller goes away (a client that disconnects, a cancelled request):
leaving then would strand a new small part beside an old big part.

What remains: between the small part's acceptance and the end of the CDN
copy, a load sees the new small part with the old big part. Format v2 reads
that as a clean failure (the header's salt binds every chunk); v1 cannot
tell and yields garbage for that window (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from edgeloader import crypto
from edgeloader.errors import CdnError, EdgeloaderError
from edgeloader.metrics import Metrics
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    folder: str
    name: str
    plaintext_bytes: int
    small_bytes: int
    big_bytes: int


class Uploader:
    """The uploads of one app (or of one publishing run)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        # Publishing steps that must outlive their caller; kept so they are
        # not garbage-collected while they run.
        self._finishing: set[asyncio.Task[None]] = set()
        # One publish at a time per resource: two overwrites of one name
        # whose small posts and CDN copies interleave would pair one's small
        # part with the other's big part for good. Entries live only while
        # someone holds or waits.
        self._publishing: dict[tuple[str, str], asyncio.Lock] = {}

    async def upload(
        self,
        cdn: Cdn,
        api: ResourceApiClient,
        folder: str,
        name: str,
        plaintext: AsyncIterable[bytes],
        *,
        part_size: int,
        fmt: int = 1,
        segment: int | None = None,
        before_publish: Callable[[], Awaitable[None]] | None = None,
        publishing: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> Published:
        """Stages, then publishes; on any failure before publishing, discards.

        ``api`` must be logged in as a user that may upload. ``fmt`` is the
        container format of the resource's ciphertext (1 or 2). With
        ``segment``, the ciphertext's segment list (docs/protocol.md) is
        computed as it streams and published as ``NAME.segments`` beside the
        small part. ``before_publish`` runs between the two steps (the web
        layer reads the rest of its form there); if it raises, nothing is
        published. ``publishing`` is given the publishing step, which goes
        on if the caller is cancelled (the web layer audits its end).
        """
        counted = 0
        hasher = crypto.SegmentHasher(segment) if segment is not None else None

        async def counting() -> AsyncIterator[bytes]:
            nonlocal counted
            async for chunk in plaintext:
                counted += len(chunk)
                yield chunk

        async def listed(ciphertext: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            async for chunk in ciphertext:
                if hasher is not None:
                    hasher.update(chunk)
                yield chunk

        ciphertext = listed(crypto.encrypt_chunks(crypto.resource_key(), counting(), fmt))
        small, big = await crypto.split_ciphertext(ciphertext)
        staged = crypto.staging_name(name, secrets.token_hex(8))
        try:
            big_bytes = await cdn.upload(folder, staged, big, part_size)
            if before_publish is not None:
                await before_publish()
        except BaseException:
            await _discard(cdn, folder, staged)
            raise
        segments = hasher.finish() if hasher is not None else None
        finishing = asyncio.create_task(
            self._publish(cdn, api, folder, name, staged, small, big_bytes, segments),
            name=f"publish {name}",
        )
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finishing.discard)
        if publishing is not None:
            publishing(finishing)
        # A cancelled caller stops waiting here; the publishing goes on.
        await asyncio.shield(finishing)
        if self.metrics is not None:
            self.metrics.upload_published(counted)
        log.info(
            "uploaded %s/%s: %d plaintext bytes, small %d + big %d",
            folder,
            name,
            counted,
            len(small),
            big_bytes,
        )
        return Published(folder, name, counted, len(small), big_bytes)

    @contextlib.asynccontextmanager
    async def _one_publish_at_a_time(self, folder: str, name: str) -> AsyncIterator[None]:
        key = (folder, name)
        lock = self._publishing.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._publishing.get(key) is lock:
                del self._publishing[key]

    async def _publish(
        self,
        cdn: Cdn,
        api: ResourceApiClient,
        folder: str,
        name: str,
        staged: str,
        small: bytes,
        big_bytes: int,
        segments: bytes | None,
    ) -> None:
        async with self._one_publish_at_a_time(folder, name):
            try:
                # The list first: a box finds it as soon as a manifest names
                # the new resource, which needs its small part first.
                if segments is not None:
                    await api.upload_part(folder, crypto.segments_name(name), segments)
                await api.upload_part(folder, crypto.small_name(name), small)
            except BaseException:
                await _discard(cdn, folder, staged)
                raise
            try:
                await cdn.copy(folder, staged, crypto.big_name(name), big_bytes)
            except CdnError:
                # The new small part is live with the old big part: say so
                # loudly, and keep the staged object, which an operator can
                # copy in place.
                log.error(
                    "%s/%s: the small part is published but the big part could not be put "
                    "in place; the new big part stays at %s/%s",
                    folder,
                    name,
                    folder,
                    staged,
                )
                raise
            await _discard(cdn, folder, staged)


async def _discard(cdn: Cdn, folder: str, key: str) -> None:
    """Removes a staged big part (best effort: the first error matters more,
    and it must not be hidden by this one, e.g. a bucket that is missing)."""
    try:
        await cdn.delete(folder, key)
    except EdgeloaderError:
        log.warning("could not remove staged %s/%s", folder, key, exc_info=True)
