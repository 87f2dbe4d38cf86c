"""Publishing service images: ``images.enc = v2(archive_key, docker_save_tar)``
(or v1 for Azaion-compatible fleets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from edgeloader.publishing import AtomicFile, crypto, read_file_chunks

__all__ = ["CHUNK_SIZE", "encrypt_archive"]

CHUNK_SIZE = 1024 * 1024


async def encrypt_archive(
    src: Path,
    dst: Path,
    fragment: bytes,
    progress: Callable[[int], None] | None = None,
    fmt: int = 2,
) -> int:
    """Encrypts ``src`` into ``dst`` under ``archive_key(fragment)`` in format ``fmt``.

    Streams in 1 MiB chunks through the project's one streaming encryption;
    ``progress(n)`` is called with each chunk's plaintext size. ``dst``
    appears complete or not at all (a failure leaves any previous file).
    Returns the size of ``dst``.
    """

    async def plaintext() -> AsyncIterator[bytes]:
        async for chunk in read_file_chunks(src, CHUNK_SIZE):
            if progress is not None:
                progress(len(chunk))
            yield chunk

    # Ciphertext meant to be shipped: readable like any other file.
    with AtomicFile(dst, 0o644) as out:
        async for piece in crypto.encrypt_chunks(crypto.archive_key(fragment), plaintext(), fmt):
            await asyncio.to_thread(out.write, piece)
        await asyncio.to_thread(out.commit)
        return out.size
