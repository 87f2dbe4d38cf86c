"""The Python face of the Rust crypto core.

Everything here streams or works on borrowed buffers; the heavy calls
release the GIL inside the core for inputs of 64 KiB and more.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from edgeloader._core import (
    BLOCK_SIZE,
    Decryptor,
    Encryptor,
    Sha256,
    api_key,
    archive_key,
    decrypt_range,
    decrypt_v1,
    encrypt_v1,
    hash_b64,
    hw_hash,
    key_from_str,
    resource_key,
)
from edgeloader.errors import DecryptionError

__all__ = [
    "BLOCK_SIZE",
    "FULL_SMALL_PART_FROM",
    "IV_SIZE",
    "MAX_SMALL_PART",
    "DecryptionError",
    "Decryptor",
    "Encryptor",
    "Sha256",
    "api_key",
    "archive_key",
    "decrypt_range",
    "decrypt_stream",
    "decrypt_v1",
    "encrypt_stream",
    "encrypt_v1",
    "hash_b64",
    "hw_hash",
    "key_from_str",
    "padded_length",
    "plaintext_length",
    "resource_key",
    "small_part_length",
]

IV_SIZE = BLOCK_SIZE
#: Largest small part (DESIGN §4).
MAX_SMALL_PART = 3072
#: From this ciphertext length on, the small part is always MAX_SMALL_PART.
FULL_SMALL_PART_FROM = MAX_SMALL_PART * 10 // 3


def small_part_length(ciphertext_length: int) -> int:
    """``min(3072, floor(0.3 x len(ct)))``, in integers to avoid float rounding."""
    return min(MAX_SMALL_PART, ciphertext_length * 3 // 10)


def plaintext_length(key: bytes, ciphertext_length: int, last_two_blocks: bytes) -> int:
    """Length of the plaintext of a v1 ciphertext, from its last 32 bytes only.

    CBC lets the final block be decrypted on its own (its IV is the block
    before it), which reveals the padding and so the exact length before
    the rest is read. Raises :class:`DecryptionError` like any bad input.
    """
    if ciphertext_length < 2 * BLOCK_SIZE or ciphertext_length % BLOCK_SIZE:
        raise DecryptionError()
    if len(last_two_blocks) != 2 * BLOCK_SIZE:
        raise DecryptionError()
    dec = Decryptor(key, last_two_blocks[:BLOCK_SIZE])
    dec.update(last_two_blocks[BLOCK_SIZE:])
    return ciphertext_length - 2 * BLOCK_SIZE + len(dec.finalize())


def padded_length(plaintext_length: int) -> int:
    """Length of ``PKCS7(plaintext)``: PKCS7 always adds 1 to 16 bytes."""
    return (plaintext_length // BLOCK_SIZE + 1) * BLOCK_SIZE


def encrypt_stream(key: bytes, chunks: Iterable[bytes], iv: bytes | None = None) -> Iterator[bytes]:
    """Format v1 over an iterable of plaintext chunks: yields the IV, then ciphertext."""
    enc = Encryptor(key, iv)
    yield enc.iv
    for chunk in chunks:
        out = enc.update(chunk)
        if out:
            yield out
    yield enc.finalize()


async def decrypt_stream(
    key: bytes, chunks: AsyncIterable[bytes], iv: bytes | None = None
) -> AsyncIterator[bytes]:
    """Decrypts a format v1 stream of ciphertext chunks.

    Without ``iv`` the first 16 bytes of the stream are the IV. Raises
    :class:`DecryptionError` when the stream is truncated or the padding is
    bad, after every complete block before the last has been yielded.
    """
    head = b""
    dec = Decryptor(key, iv) if iv is not None else None
    async for chunk in chunks:
        if dec is None:
            head += bytes(chunk)
            if len(head) < IV_SIZE:
                continue
            dec = Decryptor(key, head[:IV_SIZE])
            chunk, head = head[IV_SIZE:], b""
        out = dec.update(chunk)
        if out:
            yield out
    if dec is None:
        raise DecryptionError()
    tail = dec.finalize()
    if tail:
        yield tail
