"""Format v2 (docs/protocol.md, "Format v2") through the Python API.

The oracle below is written from the text of §4.2 with `cryptography`'s
AESGCM and HKDF, independently of the core; the core must agree with it
byte for byte in both directions, and refuse every tampered file with the
one DecryptionError.
"""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloader import _core
from edgeloader.errors import DECRYPTION_FAILED, DecryptionError, StreamFinalized
from tests.support.reference import (
    oracle_decrypt,
    oracle_encrypt,
    oracle_header,
    oracle_layout,
    oracle_nonce,
    oracle_payload_key,
)

KEY = bytes(range(32))
SALT = bytes(range(0x10, 0x20))
PREFIX = bytes(range(0xA0, 0xA7))

# --- Helpers -------------------------------------------------------------------


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def stream_decrypt(key: bytes, pieces: list[bytes], use_into: bool = False) -> bytes:
    dec = _core.DecryptorV2(key)
    out = bytearray()
    for piece in pieces:
        if use_into:
            buf = bytearray(dec.output_length(len(piece)))
            n = dec.update_into(memoryview(piece), buf)
            out += buf[:n]
        else:
            out += dec.update(memoryview(piece))
    out += dec.finalize()
    return bytes(out)


def stream_encrypt(
    key: bytes, pieces: list[bytes], s: int, salt: bytes, prefix: bytes, use_into: bool = False
) -> bytes:
    enc = _core.EncryptorV2(key, s, salt, prefix)
    out = bytearray()
    for piece in pieces:
        if use_into:
            buf = bytearray(enc.output_length(len(piece)))
            assert enc.update_into(piece, buf) == len(buf)
            out += buf
        else:
            out += enc.update(piece)
    out += enc.finalize()
    return bytes(out)


def fails(key: bytes, data: bytes) -> None:
    """Both the one-shot and the streaming reader refuse `data`, with the one message."""
    with pytest.raises(DecryptionError) as info:
        _core.decrypt_v2(key, data)
    assert str(info.value) == DECRYPTION_FAILED
    with pytest.raises(DecryptionError, match=f"^{DECRYPTION_FAILED}$"):
        stream_decrypt(key, chunked(data, [len(data) // 3, len(data) // 2]))


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# --- Known answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "length"),
    [
        (16, 0),
        (16, 1),
        (16, 5),
        (16, 65535),
        (16, 65536),
        (16, 65537),
        (16, 3 * 65536),
        (17, 0),
        (17, 131072),
        (17, 131073),
        (24, 100),
    ],
)
def test_known_answers_from_the_text(s: int, length: int) -> None:
    plaintext = pattern(length)
    expected = oracle_encrypt(KEY, plaintext, s)
    assert _core.encrypt_v2(KEY, plaintext, s, SALT, PREFIX) == expected
    assert _core.decrypt_v2(KEY, expected) == plaintext
    assert _core.v2_plaintext_length(expected[:32], len(expected)) == length


def test_known_answer_literal() -> None:
    # The same vectors as the Rust unit tests, so both sides pin one value.
    header = bytes.fromhex("454c443202011000101112131415161718191a1b1c1d1e1fa0a1a2a3a4a5a600")
    assert oracle_header(16, SALT, PREFIX) == header
    assert oracle_payload_key(KEY, header).hex() == (
        "0549706e10d9f9c6cf15d2c923287d1291863b82eefe4f34c90bcc621172ae49"
    )
    assert _core.encrypt_v2(KEY, b"", 16, SALT, PREFIX) == header + bytes.fromhex(
        "a43be5d9b740660e5df54247f5a0e246"
    )


def test_encryptor_header_and_defaults() -> None:
    enc = _core.EncryptorV2(KEY)
    header = enc.header
    assert len(header) == _core.V2_HEADER_SIZE == 32
    assert header[:4] == _core.V2_MAGIC == b"ELD2"
    assert header[4:8] == bytes([2, 1, 16, 0])
    assert header[31] == 0
    assert enc.chunk_size == 1 << _core.V2_DEFAULT_CHUNK_LOG2 == 65536
    assert _core.EncryptorV2(KEY).header[8:31] != header[8:31]  # random salt and prefix
    out = enc.update(b"") + enc.finalize()
    assert out[:32] == header
    assert len(out) == 48


# --- Round trips against the oracle, both directions ----------------------------

LOG2 = st.sampled_from([16, 17, 18])


@st.composite
def lengths_near_boundaries(draw: st.DrawFn, s: int) -> int:
    size = 1 << s
    k = draw(st.integers(min_value=0, max_value=3))
    delta = draw(st.integers(min_value=-2, max_value=2))
    return max(0, k * size + delta)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    s=LOG2,
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=6),
    salt=st.binary(min_size=16, max_size=16),
    prefix=st.binary(min_size=7, max_size=7),
    use_into=st.booleans(),
)
def test_core_writer_matches_the_oracle(
    data: st.DataObject,
    s: int,
    cuts: list[int],
    salt: bytes,
    prefix: bytes,
    use_into: bool,
) -> None:
    length = data.draw(lengths_near_boundaries(s))
    plaintext = os.urandom(length)
    expected = oracle_encrypt(KEY, plaintext, s, salt, prefix)
    got = stream_encrypt(KEY, chunked(plaintext, cuts), s, salt, prefix, use_into)
    assert got == expected
    assert oracle_decrypt(KEY, got) == plaintext


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    s=LOG2,
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=6),
    use_into=st.booleans(),
)
def test_core_reader_reads_the_oracle(
    data: st.DataObject, s: int, cuts: list[int], use_into: bool
) -> None:
    length = data.draw(lengths_near_boundaries(s))
    plaintext = os.urandom(length)
    ct = oracle_encrypt(KEY, plaintext, s, os.urandom(16), os.urandom(7))
    assert stream_decrypt(KEY, chunked(ct, cuts), use_into) == plaintext
    assert _core.v2_plaintext_length(ct[:32], len(ct)) == length


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_small_files_any_chunking(plaintext: bytes, cuts: list[int]) -> None:
    ct = oracle_encrypt(KEY, plaintext)
    assert stream_decrypt(KEY, chunked(ct, cuts)) == plaintext
    assert stream_encrypt(KEY, chunked(plaintext, cuts), 16, SALT, PREFIX) == ct


def test_the_last_complete_chunk_is_held_back() -> None:
    size = 1 << 16
    plaintext = os.urandom(2 * size)
    ct = oracle_encrypt(KEY, plaintext)
    dec = _core.DecryptorV2(KEY)
    # Header and the whole first chunk: it may be the final one, so nothing yet.
    assert dec.update(ct[: 32 + size + 16]) == b""
    # One more byte shows it was not final: it is released.
    assert dec.update(ct[32 + size + 16 : 32 + size + 17]) == plaintext[:size]
    assert dec.update(ct[32 + size + 17 :]) == b""
    assert dec.finalize() == plaintext[size:]


def test_output_length_is_exact_after_the_header() -> None:
    ct = oracle_encrypt(KEY, os.urandom(300_000))
    dec = _core.DecryptorV2(KEY)
    assert dec.output_length(len(ct)) >= len(ct) - 32 - 16 * 5 - 65536
    dec.update(ct[:32])
    rest = ct[32:]
    for piece in chunked(rest, [1, 65551, 65553, 200_000]):
        expected = dec.output_length(len(piece))
        assert len(dec.update(piece)) == expected


# --- Random access --------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_chunks_open_alone(length: int) -> None:
    plaintext = os.urandom(length)
    ct = oracle_encrypt(KEY, plaintext)
    header = ct[:32]
    k = _core.v2_chunk_count(header, len(ct))
    parts = []
    for i in range(k):
        start, end, is_final = _core.v2_chunk_range(header, len(ct), i)
        assert is_final == (i == k - 1)
        assert start == 32 + i * (65536 + 16)
        parts.append(_core.v2_open_chunk(KEY, header, i, is_final, ct[start:end]))
        with pytest.raises(DecryptionError):
            _core.v2_open_chunk(KEY, header, i, not is_final, ct[start:end])
        with pytest.raises(DecryptionError):
            _core.v2_open_chunk(KEY, header, i, is_final, ct[start : end - 1])
        with pytest.raises(DecryptionError):
            _core.v2_open_chunk(KEY, header, i + 1, is_final, ct[start:end])
    assert b"".join(parts) == plaintext
    with pytest.raises(IndexError):
        _core.v2_chunk_range(header, len(ct), k)


def test_open_chunk_sizes_are_exact() -> None:
    header = oracle_header(16, SALT, PREFIX)
    full = 65536 + 16
    for size, index, is_final in [
        (full + 1, 0, True),
        (full - 1, 0, False),
        (15, 0, True),
        (16, 1, True),  # an empty final chunk is only chunk 0
        (full, 2**32 - 1, False),  # the last possible chunk cannot be non-final
        (16, 2**32, True),
    ]:
        with pytest.raises(DecryptionError):
            _core.v2_open_chunk(KEY, header, index, is_final, bytes(size))


@pytest.mark.parametrize("s", [16, 17, 24])
def test_length_rule_matches_the_text(s: int) -> None:
    header = oracle_header(s, SALT, PREFIX)
    f = (1 << s) + 16
    candidates = {*range(60), *(32 + k * f + d for k in range(1, 4) for d in range(-2, 20))}
    candidates |= {32 + 2**32 * f, 32 + 2**32 * f + 17, 2**64 - 1, -1}
    for file_length in sorted(candidates):
        expected = oracle_layout(header, file_length) if file_length >= 0 else None
        if expected is None:
            with pytest.raises(DecryptionError):
                _core.v2_plaintext_length(header, file_length)
        else:
            assert _core.v2_plaintext_length(header, file_length) == expected[1], file_length
            assert _core.v2_chunk_count(header, file_length) == expected[0]


# --- Detection ------------------------------------------------------------------


def test_detection() -> None:
    assert _core.detect_format(oracle_encrypt(KEY, b"x")[:16]) == 2
    assert _core.detect_format(b"ELD2") == 2
    assert _core.detect_format(b"ELD1\x02") == 1
    assert _core.detect_format(b"") == 1
    assert _core.detect_format(_core.encrypt_v1(KEY, b"x")) == 1
    for version in (0, 1, 3, 0xFF):
        with pytest.raises(DecryptionError, match=f"^{DECRYPTION_FAILED}$"):
            _core.detect_format(b"ELD2" + bytes([version]))


def test_a_changed_magic_reads_as_v1() -> None:
    ct = bytearray(oracle_encrypt(KEY, os.urandom(100)))
    for i in range(4):
        bad = bytearray(ct)
        bad[i] ^= 0x20
        assert _core.detect_format(bytes(bad)) == 1
        with pytest.raises(DecryptionError):
            _core.decrypt_v2(KEY, bytes(bad))


# --- Tampering: one error, one message ------------------------------------------

SIZE = 1 << 16
F = SIZE + 16
GOOD_PT = os.urandom(3 * SIZE + 100)
GOOD = oracle_encrypt(KEY, GOOD_PT)


@pytest.mark.parametrize("chunk", range(4))
def test_a_flipped_bit_in_any_chunk_fails(chunk: int) -> None:
    start = 32 + chunk * F
    end = min(start + F, len(GOOD))
    for pos in (start, (start + end) // 2, end - 17, end - 1):
        bad = bytearray(GOOD)
        bad[pos] ^= 1 << (pos % 8)
        fails(KEY, bytes(bad))


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 2), (0, 2)])
def test_a_swapped_pair_of_chunks_fails(a: int, b: int) -> None:
    chunks = [GOOD[32 + i * F : 32 + (i + 1) * F] for i in range(4)]
    chunks[a], chunks[b] = chunks[b], chunks[a]
    fails(KEY, GOOD[:32] + b"".join(chunks))


def test_a_dropped_final_chunk_fails() -> None:
    fails(KEY, GOOD[: 32 + 3 * F])


def test_an_extra_chunk_after_the_final_fails() -> None:
    aead = AESGCM(oracle_payload_key(KEY, GOOD[:32]))
    extra = aead.encrypt(oracle_nonce(GOOD[:32], 4, True), b"more", GOOD[:32])
    fails(KEY, GOOD + extra)
    fails(KEY, GOOD + b"\x00")


def test_a_dropped_middle_chunk_fails() -> None:
    fails(KEY, GOOD[: 32 + F] + GOOD[32 + 2 * F :])


@pytest.mark.parametrize("index", range(4, 32))
def test_any_changed_header_byte_fails(index: int) -> None:
    for flip in (0x01, 0x80):
        bad = bytearray(GOOD)
        bad[index] ^= flip
        fails(KEY, bytes(bad))


def test_a_wrong_key_fails() -> None:
    fails(bytes(32), GOOD)


def test_truncation_at_every_position_of_a_small_file() -> None:
    ct = oracle_encrypt(KEY, os.urandom(300))
    for cut in range(len(ct)):
        fails(KEY, ct[:cut])


def test_truncation_around_every_chunk_boundary() -> None:
    cuts = {c for k in range(4) for c in range(32 + k * F - 20, 32 + k * F + 20)}
    for cut in sorted(c for c in cuts if 0 <= c < len(GOOD)):
        fails(KEY, GOOD[:cut])


def test_a_failed_update_into_leaves_no_plaintext_and_poisons() -> None:
    bad = bytearray(GOOD)
    bad[32 + F + 100] ^= 1  # chunk 1
    dec = _core.DecryptorV2(KEY)
    out = bytearray(b"\xaa" * dec.output_length(len(bad)))
    with pytest.raises(DecryptionError):
        dec.update_into(bytes(bad), out)
    # The call would have written 3 chunks; the rest of the (upper-bound
    # sized) buffer is untouched.
    assert out[: 3 * SIZE] == bytes(3 * SIZE)
    assert out[3 * SIZE :] == b"\xaa" * (len(out) - 3 * SIZE)
    with pytest.raises(DecryptionError):
        dec.update(b"x")
    with pytest.raises(DecryptionError):
        dec.finalize()


# --- Misuse ----------------------------------------------------------------------


def test_misuse_is_reported_as_value_errors() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _core.DecryptorV2(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        _core.EncryptorV2(b"short")
    for s in (15, 25):
        with pytest.raises(ValueError, match="chunk_log2"):
            _core.EncryptorV2(KEY, s)
    with pytest.raises(ValueError, match="salt"):
        _core.EncryptorV2(KEY, 16, b"short")
    with pytest.raises(ValueError, match="nonce prefix"):
        _core.EncryptorV2(KEY, 16, SALT, b"short")
    with pytest.raises(ValueError, match="too small"):
        _core.EncryptorV2(KEY).update_into(b"x", bytearray(10))


def test_streams_refuse_use_after_finalize() -> None:
    enc = _core.EncryptorV2(KEY)
    ct = enc.update(b"abc") + enc.finalize()
    with pytest.raises(StreamFinalized):
        enc.update(b"x")
    with pytest.raises(StreamFinalized):
        enc.finalize()
    dec = _core.DecryptorV2(KEY)
    assert dec.update(ct) + dec.finalize() == b"abc"
    with pytest.raises(StreamFinalized):
        dec.update(b"x")
    with pytest.raises(StreamFinalized):
        dec.finalize()
