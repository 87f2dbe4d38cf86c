"""The Python face of the Rust crypto core: what the services need, and
nothing chunk-sized (docs/protocol.md describes the formats).

- keys: ``api_key``, ``resource_key``, ``archive_key``;
- streams: ``encrypt_chunks``, ``decrypt_stream``, ``Sha256``; the small
  part's transport wrapping, ``encrypt_v1`` and ``decrypt_v1``;
- facts about the formats: ``detect_format``, the lengths, the v2 chunk
  geometry;
- integrity: the segment list of a release (``SegmentHasher``,
  ``SegmentGate``) and v2's per-chunk check of stored ciphertext
  (``ChunkGate``);
- the names and the split of a resource's parts (``parts.py``).

Everything here streams or works on borrowed buffers; the heavy calls
release the GIL inside the core for inputs of 64 KiB and more.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from edgeloader._core import (
    BLOCK_SIZE,
    SEGMENT_DEFAULT,
    SEGMENT_MAX,
    SEGMENT_MIN,
    ChunkGate,
    Decryptor,
    DecryptorV2,
    Encryptor,
    EncryptorV2,
    SegmentGate,
    SegmentHasher,
    Sha256,
    api_key,
    archive_key,
    decrypt_v1,
    detect_format,
    encrypt_v1,
    resource_key,
    segment_count,
    v1_padded_length,
    v1_plaintext_length,
    v2_plaintext_length,
    v2_stored_chunk_size,
)
from edgeloader.crypto.parts import (
    big_name,
    segments_name,
    small_name,
    small_part_length,
    split_ciphertext,
    staging_name,
)
from edgeloader.errors import DecryptionError

__all__ = [
    "BLOCK_SIZE",
    "FORMAT_PREFIX",
    "SEGMENT_DEFAULT",
    "SEGMENT_MAX",
    "SEGMENT_MIN",
    "V1_TAIL",
    "V2_HEADER_SIZE",
    "ChunkGate",
    "DecryptionError",
    "SegmentGate",
    "SegmentHasher",
    "Sha256",
    "api_key",
    "archive_key",
    "big_name",
    "decrypt_stream",
    "decrypt_v1",
    "detect_format",
    "encrypt_chunks",
    "encrypt_v1",
    "resource_key",
    "resource_plaintext_length",
    "segment_count",
    "segments_name",
    "small_name",
    "small_part_length",
    "split_ciphertext",
    "staging_name",
    "v1_length",
    "v2_stored_chunk_size",
]

IV_SIZE = BLOCK_SIZE
#: How much of a v1 ciphertext's end ``plaintext_length`` needs.
V1_TAIL = 2 * BLOCK_SIZE
#: The v2 header, from which, with the size, a v2 file's plaintext length follows.
V2_HEADER_SIZE = 32
#: Enough of a ciphertext's start to tell v1 from v2 (``detect_format``).
FORMAT_PREFIX = 4


def v1_length(plaintext_length: int) -> int:
    """The length of a v1 file holding ``plaintext_length`` bytes."""
    return IV_SIZE + v1_padded_length(plaintext_length)


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
    key: bytes, chunks: AsyncIterable[bytes | memoryview], iv: bytes | None = None
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
    return v1_plaintext_length(resource_key(), size, tail[-V1_TAIL:])
