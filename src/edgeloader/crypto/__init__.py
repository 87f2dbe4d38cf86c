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
from edgeloader._core import v1_padded_length as padded_length
from edgeloader._core import v1_plaintext_length as plaintext_length
from edgeloader.crypto.parts import (
    FULL_SMALL_PART_FROM,
    MAX_SMALL_PART,
    big_name,
    small_name,
    small_part_length,
    split_ciphertext,
)
from edgeloader.errors import DecryptionError

__all__ = [
    "BLOCK_SIZE",
    "FULL_SMALL_PART_FROM",
    "IV_SIZE",
    "MAX_SMALL_PART",
    "V1_TAIL",
    "DecryptionError",
    "Decryptor",
    "Encryptor",
    "Sha256",
    "api_key",
    "archive_key",
    "big_name",
    "decrypt_range",
    "decrypt_stream",
    "decrypt_v1",
    "encrypt_chunks",
    "encrypt_stream",
    "encrypt_v1",
    "hash_b64",
    "hw_hash",
    "key_from_str",
    "padded_length",
    "plaintext_length",
    "resource_key",
    "small_name",
    "small_part_length",
    "split_ciphertext",
    "split_plaintext_length",
]

IV_SIZE = BLOCK_SIZE


#: How much of a v1 ciphertext's end ``plaintext_length`` needs.
V1_TAIL = 2 * BLOCK_SIZE


def split_plaintext_length(small: bytes, big_size: int, big_tail: bytes) -> int:
    """Plaintext length of a v1 resource under the resource key, from its
    small part, the big part's size and the big part's last ``V1_TAIL`` bytes
    (fewer when the big part is shorter: then the small part supplies the rest)."""
    last = (small + big_tail)[-V1_TAIL:]
    return plaintext_length(resource_key(), len(small) + big_size, last)


def encrypt_stream(key: bytes, chunks: Iterable[bytes], iv: bytes | None = None) -> Iterator[bytes]:
    """Format v1 over an iterable of plaintext chunks: yields the IV, then ciphertext."""
    enc = Encryptor(key, iv)
    yield enc.iv
    for chunk in chunks:
        yield enc.update(chunk)
    yield enc.finalize()


async def encrypt_chunks(key: bytes, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The one streaming encryption of the project (upload, publishing, the
    reference API): format v1 under ``key``, the IV first, then ciphertext
    as the plaintext arrives. Empty pieces are not yielded."""
    enc = Encryptor(key)
    yield enc.iv
    async for chunk in chunks:
        if out := enc.update(chunk):
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
