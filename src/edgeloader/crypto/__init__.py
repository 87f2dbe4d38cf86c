"""The Python face of the Rust crypto core.

Everything here streams or works on borrowed buffers; the heavy calls
release the GIL inside the core for inputs of 64 KiB and more.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from edgeloader._core import (
    BLOCK_SIZE,
    Decryptor,
    DecryptorV2,
    Encryptor,
    EncryptorV2,
    Sha256,
    api_key,
    archive_key,
    decrypt_range,
    decrypt_v1,
    decrypt_v2,
    detect_format,
    encrypt_v1,
    encrypt_v2,
    hash_b64,
    hw_hash,
    key_from_str,
    resource_key,
    v2_chunk_range,
    v2_open_chunk,
    v2_plaintext_length,
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
    staging_name,
)
from edgeloader.errors import DecryptionError

__all__ = [
    "BLOCK_SIZE",
    "FORMAT_PREFIX",
    "FULL_SMALL_PART_FROM",
    "IV_SIZE",
    "MAX_SMALL_PART",
    "V1_TAIL",
    "V2_HEADER_SIZE",
    "DecryptionError",
    "Decryptor",
    "DecryptorV2",
    "Encryptor",
    "EncryptorV2",
    "Sha256",
    "api_key",
    "archive_key",
    "big_name",
    "decrypt_range",
    "decrypt_stream",
    "decrypt_v1",
    "decrypt_v2",
    "detect_format",
    "encrypt_chunks",
    "encrypt_v1",
    "encrypt_v2",
    "hash_b64",
    "hw_hash",
    "key_from_str",
    "padded_length",
    "plaintext_length",
    "resource_key",
    "resource_plaintext_length",
    "small_name",
    "small_part_length",
    "split_ciphertext",
    "split_plaintext_length",
    "staging_name",
    "v2_chunk_range",
    "v2_open_chunk",
    "v2_plaintext_length",
]

IV_SIZE = BLOCK_SIZE


#: How much of a v1 ciphertext's end ``plaintext_length`` needs.
V1_TAIL = 2 * BLOCK_SIZE
#: The v2 header, from which, with the size, a v2 file's plaintext length follows.
V2_HEADER_SIZE = 32
#: Enough of a ciphertext's start to tell v1 from v2 (``detect_format``).
FORMAT_PREFIX = 4


def split_plaintext_length(small: bytes, big_size: int, big_tail: bytes) -> int:
    """Plaintext length of a v1 resource under the resource key, from its
    small part, the big part's size and the big part's last ``V1_TAIL`` bytes
    (fewer when the big part is shorter: then the small part supplies the rest)."""
    last = (small + big_tail)[-V1_TAIL:]
    return plaintext_length(resource_key(), len(small) + big_size, last)


async def encrypt_chunks(
    key: bytes, chunks: AsyncIterable[bytes], fmt: int = 1
) -> AsyncIterator[bytes]:
    """The one streaming encryption of the project (upload, publishing, the
    reference API): format ``fmt`` (1 or 2) under ``key``, ciphertext as the
    plaintext arrives, starting with the IV (v1) or the header (v2). Empty
    pieces are not yielded."""
    enc: Encryptor | EncryptorV2
    if fmt == 2:
        enc = EncryptorV2(key)
    elif fmt == 1:
        enc = Encryptor(key)
        yield enc.iv
    else:
        raise ValueError(f"unknown format {fmt}")
    async for chunk in chunks:
        if out := enc.update(chunk):
            yield out
    yield enc.finalize()


def _decryptor(key: bytes, head: bytes) -> tuple[Decryptor | DecryptorV2, bytes]:
    """The decryptor for a stream that starts with ``head`` (at least 16
    bytes, or the whole stream), and the part of ``head`` it has not used."""
    if len(head) >= FORMAT_PREFIX and detect_format(head[:FORMAT_PREFIX]) == 2:
        return DecryptorV2(key), head
    if len(head) < IV_SIZE:
        raise DecryptionError()
    return Decryptor(key, head[:IV_SIZE]), head[IV_SIZE:]


async def decrypt_stream(
    key: bytes, chunks: AsyncIterable[bytes], iv: bytes | None = None
) -> AsyncIterator[bytes]:
    """Decrypts a stream of ciphertext chunks, v1 or v2 as its start says.

    With ``iv`` the stream is a v1 body without its IV. v2 plaintext is
    released chunk by chunk, each only after its tag verified; v1 has no
    tag, so all but the last block is released as it is decrypted. Any
    failure raises :class:`DecryptionError`, after what was released.
    """
    head = b""
    dec: Decryptor | DecryptorV2 | None = Decryptor(key, iv) if iv is not None else None
    async for chunk in chunks:
        if dec is None:
            head += bytes(chunk)
            if len(head) < IV_SIZE:
                continue
            dec, chunk = _decryptor(key, head)
            head = b""
        if out := dec.update(chunk):
            yield out
    if dec is None:
        dec, rest = _decryptor(key, head)
        if out := dec.update(rest):
            yield out
    if tail := dec.finalize():
        yield tail


def resource_plaintext_length(fmt: int, start: bytes, size: int, tail: bytes) -> int:
    """Plaintext length of a resource's whole ciphertext (small ‖ big) of
    ``size`` bytes: for v2 from its first 32 bytes (``start``) and the size,
    for v1 from its last 32 bytes (``tail``) under the resource key."""
    if fmt == 2:
        return v2_plaintext_length(start[:V2_HEADER_SIZE], size)
    return plaintext_length(resource_key(), size, tail[-V1_TAIL:])
