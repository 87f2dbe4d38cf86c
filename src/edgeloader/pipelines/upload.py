"""Upload: plaintext stream → encrypt → split → CDN (big) → API (small).

The split point depends on the ciphertext's total length, but only while
that length is under ``FULL_SMALL_PART_FROM`` (10 KiB); from there on the
small part is always 3072 bytes. So at most the first 10 KiB of ciphertext
are held back, and the rest streams straight into a multipart upload.

The upload is staged: the big part goes to the CDN first, and only a
successful CDN upload lets the small part be posted (``publish``). A staged
upload that is not published is removed from the CDN (``discard``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from edgeloader import crypto
from edgeloader.errors import CdnError
from edgeloader.pipelines.load import big_name, small_name
from edgeloader.pipelines.session import DeviceSession

log = logging.getLogger(__name__)


async def encrypt_chunks(plaintext: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Format v1 under the resource key: the IV, then ciphertext as it comes."""
    enc = crypto.Encryptor(crypto.resource_key())
    yield enc.iv
    async for chunk in plaintext:
        out = enc.update(chunk)
        if out:
            yield out
    yield enc.finalize()


async def split_ciphertext(ciphertext: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The small part, and the rest of the stream as the big part."""
    head = bytearray()
    async for chunk in ciphertext:
        head += chunk
        if len(head) >= crypto.FULL_SMALL_PART_FROM:
            break
    # Either the stream ended (head is all of it) or the split is fixed.
    small_len = crypto.small_part_length(len(head))
    small, rest = bytes(head[:small_len]), bytes(head[small_len:])
    del head

    async def big() -> AsyncIterator[bytes]:
        if rest:
            yield rest
        async for chunk in ciphertext:
            yield chunk

    return small, big()


@dataclass
class StagedUpload:
    session: DeviceSession
    folder: str
    name: str
    small: bytes
    plaintext_bytes: int
    big_bytes: int

    async def publish(self) -> None:
        """Posts the small part, making the resource loadable."""
        await self.session.api.upload_part(self.folder, small_name(self.name), self.small)
        log.info(
            "uploaded %s/%s: %d plaintext bytes, small %d + big %d",
            self.folder,
            self.name,
            self.plaintext_bytes,
            len(self.small),
            self.big_bytes,
        )

    async def discard(self) -> None:
        """Removes the big part again (best effort)."""
        try:
            cdn = await self.session.cdn()
            await cdn.delete(self.folder, big_name(self.name))
        except CdnError:
            log.warning("could not remove staged %s/%s", self.folder, self.name, exc_info=True)


async def stage_upload(
    session: DeviceSession, folder: str, name: str, plaintext: AsyncIterable[bytes]
) -> StagedUpload:
    """Encrypts and splits ``plaintext`` and uploads the big part."""
    counted = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal counted
        async for chunk in plaintext:
            counted += len(chunk)
            yield chunk

    cdn = await session.cdn()
    small, big = await split_ciphertext(encrypt_chunks(counting()))
    big_bytes = await cdn.upload(folder, big_name(name), big, session.settings.upload_part_size)
    return StagedUpload(session, folder, name, small, counted, big_bytes)


async def upload_resource(
    session: DeviceSession, folder: str, name: str, plaintext: AsyncIterable[bytes]
) -> StagedUpload:
    """Stages and publishes in one go."""
    staged = await stage_upload(session, folder, name, plaintext)
    await staged.publish()
    return staged
