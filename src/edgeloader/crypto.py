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
    "IV_SIZE",
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
    "resource_key",
]

IV_SIZE = BLOCK_SIZE


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
