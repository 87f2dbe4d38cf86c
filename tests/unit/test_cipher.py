"""The streaming cipher through the Python API, checked against NIST
vectors and against `cryptography` as an independent oracle."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloader import _core, crypto
from edgeloader.errors import DECRYPTION_FAILED, DecryptionError, StreamFinalized

# NIST SP 800-38A, F.2.5 and F.2.6 (CBC-AES256).
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NIST_PT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CT = bytes.fromhex(
    "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
    "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"
)
KEY = bytes(range(32))


def oracle_encrypt_v1(key: bytes, plaintext: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


def oracle_decrypt_v1(key: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = dec.update(data[16:]) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def test_nist_encrypt_vector() -> None:
    enc = _core.Encryptor(NIST_KEY, NIST_IV)
    assert enc.update(NIST_PT) == NIST_CT
    assert enc.iv == NIST_IV


def test_nist_decrypt_vector_by_range() -> None:
    assert _core.decrypt_range(NIST_KEY, NIST_IV, NIST_CT) == NIST_PT


def test_nist_decrypt_from_an_inner_block() -> None:
    got = _core.decrypt_range(NIST_KEY, NIST_CT[16:32], NIST_CT[32:])
    assert got == NIST_PT[32:]


def test_nist_streaming_holds_back_the_last_block() -> None:
    dec = _core.Decryptor(NIST_KEY, NIST_IV)
    # Without PKCS7 the last block is not valid padding, so only check update.
    assert dec.update(NIST_CT) == NIST_PT[:48]


@pytest.mark.parametrize("length", range(101))
def test_round_trip_every_small_length(length: int) -> None:
    plaintext = os.urandom(length)
    ct = crypto.encrypt_v1(KEY, plaintext)
    assert len(ct) == 16 + _core.v1_padded_length(length)
    assert crypto.decrypt_v1(KEY, ct) == plaintext
    assert oracle_decrypt_v1(KEY, ct) == plaintext


@pytest.mark.parametrize("length", [1 << 16, (1 << 20) + 3, (8 << 20) - 1])
def test_round_trip_large(length: int) -> None:
    plaintext = os.urandom(length)
    iv = os.urandom(16)
    ct = crypto.encrypt_v1(KEY, plaintext, iv)
    assert ct == oracle_encrypt_v1(KEY, plaintext, iv)
    assert crypto.decrypt_v1(KEY, ct) == plaintext


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    iv=st.binary(min_size=16, max_size=16),
)
def test_streaming_encrypt_matches_oracle_for_any_chunking(
    plaintext: bytes, cuts: list[int], iv: bytes
) -> None:
    enc = _core.Encryptor(KEY, iv)
    got = enc.iv + b"".join(enc.update(piece) for piece in chunked(plaintext, cuts))
    assert got + enc.finalize() == oracle_encrypt_v1(KEY, plaintext, iv)


@settings(max_examples=200, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    iv=st.binary(min_size=16, max_size=16),
    use_into=st.booleans(),
)
def test_streaming_decrypt_of_oracle_output_for_any_chunking(
    plaintext: bytes, cuts: list[int], iv: bytes, use_into: bool
) -> None:
    ct = oracle_encrypt_v1(KEY, plaintext, iv)
    dec = _core.Decryptor(KEY, ct[:16])
    out = bytearray()
    for piece in chunked(ct[16:], cuts):
        view = memoryview(piece)
        if use_into:
            buf = bytearray(dec.output_length(len(view)))
            assert dec.update_into(view, buf) == len(buf)
            out += buf
        else:
            out += dec.update(view)
    out += dec.finalize()
    assert bytes(out) == plaintext


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("size", [0, 1, 5000, (1 << 16) + 3])
async def test_the_one_streaming_encryption_round_trips_in_both_formats(
    fmt: int, size: int
) -> None:
    plaintext = os.urandom(size)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, size, 777):
            yield plaintext[i : i + 777]

    ct = b"".join([c async for c in crypto.encrypt_chunks(KEY, pieces(), fmt)])
    assert crypto.detect_format(ct[:4]) == fmt

    async def again() -> AsyncIterator[bytes]:
        yield ct

    assert b"".join([p async for p in crypto.decrypt_stream(KEY, again())]) == plaintext


async def test_async_decrypt_stream_reads_the_iv_from_the_stream() -> None:
    plaintext = os.urandom(5000)
    ct = crypto.encrypt_v1(KEY, plaintext)

    async def pieces() -> object:
        for i in range(0, len(ct), 7):
            yield ct[i : i + 7]

    got = b"".join([c async for c in crypto.decrypt_stream(KEY, pieces())])  # type: ignore[arg-type]
    assert got == plaintext


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


GOOD = crypto.encrypt_v1(KEY, b"the quick brown fox jumps over the lazy dog")
FAILURES = {
    "empty": (KEY, b""),
    "iv only": (KEY, GOOD[:16]),
    "shorter than a block": (KEY, GOOD[:20]),
    "not block aligned": (KEY, GOOD[:-1]),
    "last block dropped": (KEY, GOOD[:-16]),
    "padding byte flipped": (KEY, _flip(GOOD, len(GOOD) - 17)),
    "last block corrupted": (KEY, _flip(GOOD, len(GOOD) - 1)),
    "wrong key": (bytes(32), GOOD),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_every_failure_is_one_error_with_one_message(case: str) -> None:
    key, data = FAILURES[case]
    with pytest.raises(DecryptionError) as info:
        crypto.decrypt_v1(key, data)
    assert str(info.value) == DECRYPTION_FAILED
    assert info.value.detail == DECRYPTION_FAILED


# A stream needs its IV to start; shorter inputs are covered above.
STREAM_FAILURES = [case for case, (_, data) in FAILURES.items() if len(data) >= 16]


@pytest.mark.parametrize("case", STREAM_FAILURES)
def test_streaming_failures_surface_at_finalize_with_the_same_message(case: str) -> None:
    key, data = FAILURES[case]
    dec = _core.Decryptor(key, data[:16])
    dec.update(data[16:])
    with pytest.raises(DecryptionError, match=f"^{DECRYPTION_FAILED}$"):
        dec.finalize()


def test_finalize_twice_and_update_after_finalize_are_refused() -> None:
    enc = _core.Encryptor(KEY)
    enc.finalize()
    with pytest.raises(StreamFinalized, match="finalized"):
        enc.finalize()
    with pytest.raises(StreamFinalized, match="finalized"):
        enc.update(b"more")
    with pytest.raises(StreamFinalized):
        enc.update_into(b"more", bytearray(32))
    ct = crypto.encrypt_v1(KEY, b"x")
    dec = _core.Decryptor(KEY, ct[:16])
    dec.update(ct[16:])
    dec.finalize()
    with pytest.raises(StreamFinalized):
        dec.finalize()


def test_bad_key_and_iv_lengths_are_value_errors() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _core.Decryptor(b"short", bytes(16))
    with pytest.raises(ValueError, match="16 bytes"):
        _core.Encryptor(KEY, b"short")
    with pytest.raises(ValueError, match="multiple of 16"):
        _core.decrypt_range(KEY, bytes(16), bytes(17))


def test_update_into_rejects_small_readonly_and_overlapping_outputs() -> None:
    dec = _core.Decryptor(KEY, bytes(16))
    with pytest.raises(ValueError, match="too small"):
        dec.update_into(bytes(64), bytearray(16))
    with pytest.raises(ValueError, match="writable"):
        dec.update_into(bytes(64), bytes(64))
    shared = bytearray(128)
    with pytest.raises(ValueError, match="overlap"):
        dec.update_into(memoryview(shared)[:64], memoryview(shared)[32:])


def test_non_contiguous_input_is_refused() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        _core.Decryptor(KEY, bytes(16)).update(memoryview(bytes(64))[::2])


def test_encryptor_iv_is_random_when_not_given() -> None:
    assert _core.Encryptor(KEY).iv != _core.Encryptor(KEY).iv
    assert len(_core.Encryptor(KEY).iv) == 16


# The v1 lengths and the split rule in the core, against `cryptography`.


@pytest.mark.parametrize("length", [*range(50), 1000, 4095, 4096, 4097, 100_000])
def test_v1_lengths_match_the_oracle(length: int) -> None:
    plaintext = os.urandom(length)
    ct = oracle_encrypt_v1(KEY, plaintext, os.urandom(16))
    assert _core.v1_padded_length(length) == len(ct) - 16
    assert _core.v1_plaintext_length(KEY, len(ct), ct[-32:]) == length


@settings(max_examples=200, deadline=None)
@given(length=st.integers(min_value=0, max_value=5000), iv=st.binary(min_size=16, max_size=16))
def test_v1_plaintext_length_from_the_tail_alone(length: int, iv: bytes) -> None:
    ct = oracle_encrypt_v1(KEY, bytes(length), iv)
    assert _core.v1_plaintext_length(KEY, len(ct), ct[-32:]) == length


V1_LENGTH_FAILURES = {
    "negative length": (-32, GOOD[-32:]),
    "shorter than two blocks": (16, GOOD[-32:]),
    "zero length": (0, GOOD[-32:]),
    "unaligned length": (len(GOOD) - 1, GOOD[-32:]),
    "tail too short": (len(GOOD), GOOD[-31:]),
    "tail too long": (len(GOOD), GOOD[-33:]),
    "padding corrupted": (len(GOOD), _flip(GOOD, len(GOOD) - 17)[-32:]),
}


@pytest.mark.parametrize("case", V1_LENGTH_FAILURES, ids=list(V1_LENGTH_FAILURES))
def test_v1_plaintext_length_failures_are_decryption_errors(case: str) -> None:
    length, tail = V1_LENGTH_FAILURES[case]
    with pytest.raises(DecryptionError, match=f"^{DECRYPTION_FAILED}$"):
        _core.v1_plaintext_length(KEY, length, tail)


def test_v1_plaintext_length_wrong_key() -> None:
    with pytest.raises(DecryptionError):
        # A wrong key leaves bad padding in all but ~1/256 of cases; this
        # ciphertext is fixed, and its last block does not unpad under zeros.
        _core.v1_plaintext_length(bytes(32), len(GOOD), GOOD[-32:])
    with pytest.raises(ValueError, match="32 bytes"):
        _core.v1_plaintext_length(b"short", len(GOOD), GOOD[-32:])


def test_v1_padded_length_edges() -> None:
    assert [_core.v1_padded_length(n) for n in (0, 1, 15, 16, 17, 31, 32)] == [
        16,
        16,
        16,
        32,
        32,
        32,
        48,
    ]
    with pytest.raises(OverflowError):
        _core.v1_padded_length(2**64 - 1)


@pytest.mark.parametrize("n", [*range(60), 10_239, 10_240, 10_241, 2**40 + 7, 2**64 - 1])
def test_small_part_length_is_the_integer_formula(n: int) -> None:
    assert _core.small_part_length(n) == min(3072, n * 3 // 10)


def test_split_constants() -> None:
    assert _core.MAX_SMALL_PART == 3072
    assert _core.FULL_SMALL_PART_FROM == 10_240
    assert _core.small_part_length(_core.FULL_SMALL_PART_FROM) == 3072
    assert _core.small_part_length(_core.FULL_SMALL_PART_FROM - 1) < 3072


def test_random_ivs_never_read_as_format_v2() -> None:
    for _ in range(2000):
        assert not _core.Encryptor(KEY).iv.startswith(b"ELD2")
        assert not crypto.encrypt_v1(KEY, b"").startswith(b"ELD2")
