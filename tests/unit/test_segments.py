"""The segment list and the gates that release ciphertext only once verified.

The oracle is the list as the text defines it, written with hashlib: the
ciphertext of ``size`` bytes cut into ``n = ceil(size / S)`` segments,
segment ``i`` being ``ct[i*S : min((i+1)*S, size)]``, and the list the
concatenation of their SHA-256 digests. ChunkGate is checked against files
written by ``encrypt_v2``.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloader import _core
from edgeloader.errors import DecryptionError, IntegrityError, StreamFinalized

S = 1 << 16
MIB = 1 << 20
KEY = bytes(range(32))


def oracle(ct: bytes, segment: int) -> bytes:
    n = -(-len(ct) // segment)
    return b"".join(
        hashlib.sha256(ct[i * segment : min((i + 1) * segment, len(ct))]).digest() for i in range(n)
    )


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


Gate = _core.SegmentGate | _core.ChunkGate


def feed(gate: Gate, pieces: list[bytes], error: type[Exception]) -> tuple[bytes, Exception | None]:
    """What the gate released, and the error that stopped it (or None)."""
    out = bytearray()
    try:
        for piece in pieces:
            out += gate.update(memoryview(piece))
        gate.finish()
    except error as err:
        return bytes(out), err
    return bytes(out), None


def segment_gate(ct: bytes, start: int = 0, segment: int = S) -> _core.SegmentGate:
    return _core.SegmentGate(segment, len(ct), oracle(ct, segment), start)


def assert_hash_error(err: Exception | None, index: int) -> None:
    assert isinstance(err, IntegrityError)
    assert err.reason == "hash"
    assert str(err) == f"integrity: hash: segment {index} does not match the segment list"


# --- The list -------------------------------------------------------------------


def test_constants() -> None:
    assert _core.SEGMENT_MIN == 1 << 16
    assert _core.SEGMENT_MAX == 1 << 24
    assert _core.SEGMENT_DEFAULT == MIB


def test_the_worked_example() -> None:
    ct = os.urandom(2_500_000)
    assert _core.segment_count(2_500_000, MIB) == 3
    expected = b"".join(
        hashlib.sha256(ct[a:b]).digest()
        for a, b in [(0, 1_048_576), (1_048_576, 2_097_152), (2_097_152, 2_500_000)]
    )
    assert len(expected) == 96
    assert _core.segment_list(ct, MIB) == expected
    assert _core.segment_list(memoryview(ct), MIB) == expected


@pytest.mark.parametrize("segment", [S, MIB])
@pytest.mark.parametrize(("delta", "count"), [(-1, 1), (0, 1), (1, 2)])
def test_known_answers_around_a_segment(segment: int, delta: int, count: int) -> None:
    ct = os.urandom(segment + delta)
    assert _core.segment_count(len(ct), segment) == count
    segments = _core.segment_list(ct, segment)
    assert len(segments) == 32 * count
    assert segments == oracle(ct, segment)


def test_two_segments_exactly_and_an_empty_file() -> None:
    ct = os.urandom(2 * S)
    assert _core.segment_list(ct, S) == oracle(ct, S)
    assert len(oracle(ct, S)) == 64
    assert _core.segment_count(0, S) == 0
    assert _core.segment_list(b"", S) == b""


def test_a_single_segment_file_is_its_sha256() -> None:
    ct = os.urandom(1000)
    assert _core.segment_list(ct, _core.SEGMENT_DEFAULT) == hashlib.sha256(ct).digest()
    assert _core.segment_list(ct, _core.SEGMENT_MAX) == hashlib.sha256(ct).digest()


def test_the_smallest_segment() -> None:
    ct = os.urandom(5 * S + 17)
    assert _core.segment_count(len(ct), _core.SEGMENT_MIN) == 6
    assert _core.segment_list(ct, _core.SEGMENT_MIN) == oracle(ct, S)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=3 * S + 10),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * S), max_size=8),
)
def test_the_hasher_equals_the_list_for_any_split(length: int, cuts: list[int]) -> None:
    ct = os.urandom(length)
    hasher = _core.SegmentHasher(S)
    for piece in chunked(ct, cuts):
        hasher.update(memoryview(piece))
    assert hasher.finish() == _core.segment_list(ct, S) == oracle(ct, S)


def test_a_finished_hasher_is_spent() -> None:
    hasher = _core.SegmentHasher(S)
    hasher.update(b"abc")
    assert hasher.finish() == hashlib.sha256(b"abc").digest()
    with pytest.raises(StreamFinalized):
        hasher.update(b"x")
    with pytest.raises(StreamFinalized):
        hasher.finish()


@pytest.mark.parametrize("segment", [0, 1, S // 2, S + 1, 3 * S, 1 << 25])
def test_bad_segment_sizes_are_value_errors(segment: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        _core.segment_count(10, segment)
    with pytest.raises(ValueError, match="power of two"):
        _core.segment_list(b"x", segment)
    with pytest.raises(ValueError, match="power of two"):
        _core.SegmentHasher(segment)
    with pytest.raises(ValueError, match="power of two"):
        _core.SegmentGate(segment, 1, bytes(32))


# --- SegmentGate ------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, S - 1, S, S + 1, 2 * S, 3 * S + 5])
def test_the_gate_passes_a_good_file_whole(length: int) -> None:
    ct = os.urandom(length)
    gate = segment_gate(ct)
    assert gate.update(ct) == ct
    assert (gate.position, gate.pending) == (length, 0)
    gate.finish()


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(min_value=1, max_value=3 * S + 10),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * S), max_size=8),
)
def test_the_gate_passes_a_good_file_for_any_split(length: int, cuts: list[int]) -> None:
    ct = os.urandom(length)
    assert feed(segment_gate(ct), chunked(ct, cuts), IntegrityError) == (ct, None)


def test_a_segment_is_held_until_it_is_complete() -> None:
    ct = os.urandom(2 * S + 10)
    gate = segment_gate(ct)
    assert gate.update(ct[: S - 1]) == b""
    assert (gate.position, gate.pending) == (0, S - 1)
    assert gate.update(ct[S - 1 : S + 1]) == ct[:S]
    assert (gate.position, gate.pending) == (S, 1)
    assert gate.update(ct[S + 1 :]) == ct[S:]
    assert (gate.position, gate.pending) == (len(ct), 0)
    gate.finish()


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(min_value=0, max_value=3),
    offset=st.integers(min_value=0, max_value=S - 1),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * S), max_size=6),
)
def test_a_flipped_byte_releases_exactly_the_segments_before_it(
    k: int, offset: int, cuts: list[int]
) -> None:
    ct = os.urandom(3 * S + 1000)
    pos = min(k * S + offset, len(ct) - 1)
    bad = bytearray(ct)
    bad[pos] ^= 0x01
    gate = segment_gate(ct)
    out, err = feed(gate, chunked(bytes(bad), cuts), IntegrityError)
    assert out == ct[: k * S]
    assert_hash_error(err, k)
    assert gate.position == k * S
    # The gate stays failed.
    with pytest.raises(IntegrityError):
        gate.update(b"")
    with pytest.raises(IntegrityError):
        gate.finish()


def test_the_call_that_finds_a_bad_segment_returns_the_good_ones_first() -> None:
    ct = os.urandom(3 * S)
    bad = bytearray(ct)
    bad[2 * S] ^= 0x80
    gate = segment_gate(ct)
    assert gate.update(bytes(bad)) == ct[: 2 * S]
    with pytest.raises(IntegrityError, match="segment 2 "):
        gate.update(b"")


@pytest.mark.parametrize("cut", [0, 1, S - 1, S, S + 1, 2 * S, 3 * S + 4])
def test_truncation_fails_at_the_incomplete_segment(cut: int) -> None:
    ct = os.urandom(3 * S + 5)
    out, err = feed(segment_gate(ct), [ct[:cut]], IntegrityError)
    assert out == ct[: cut // S * S]
    assert_hash_error(err, cut // S)


@pytest.mark.parametrize("length", [S, S + 5])
def test_extension_fails_as_the_next_segment(length: int) -> None:
    ct = os.urandom(length)
    n = _core.segment_count(length, S)
    out, err = feed(segment_gate(ct), [ct + b"\x00"], IntegrityError)
    assert out == ct
    assert_hash_error(err, n)
    gate = segment_gate(ct)
    assert gate.update(ct) == ct
    with pytest.raises(IntegrityError, match=f"segment {n} "):
        gate.update(b"x")


@pytest.mark.parametrize("length", [3 * S, 3 * S + 1])
def test_resume_at_a_segment_boundary(length: int) -> None:
    ct = os.urandom(length)
    for k in range(length // S + 1):
        start = k * S
        gate = segment_gate(ct, start)
        assert gate.position == start
        rest = ct[start:]
        assert feed(gate, chunked(rest, [S // 3, S + 7]), IntegrityError) == (rest, None)
    # A flip after the start still fails at its own segment.
    bad = bytearray(ct)
    bad[-1] ^= 1
    out, err = feed(segment_gate(ct, S), [bytes(bad[S:])], IntegrityError)
    last = (length - 1) // S
    assert out == ct[S : last * S]
    assert_hash_error(err, last)


def test_a_list_of_the_wrong_length_is_a_segments_error() -> None:
    ct = os.urandom(2 * S + 1)
    good = oracle(ct, S)
    for bad in (b"", good[:-1], good[:-32], good + bytes(32), good + b"\x00"):
        with pytest.raises(IntegrityError) as info:
            _core.SegmentGate(S, len(ct), bad)
        assert info.value.reason == "segments"
        assert str(info.value) == "integrity: segments: the segment list has the wrong length"


def test_a_start_off_a_segment_boundary_is_a_value_error() -> None:
    ct = os.urandom(2 * S + 1)
    for start in (1, S // 2, S + 1, len(ct), 3 * S):
        with pytest.raises(ValueError, match="segment boundary"):
            segment_gate(ct, start)
    with pytest.raises(OverflowError):
        segment_gate(ct, -S)
    # The end of a file that fills its last segment is a boundary.
    even = ct[: 2 * S]
    segment_gate(even, 2 * S).finish()


# --- ChunkGate ------------------------------------------------------------------

F = S + 16
PT = os.urandom(3 * S + 100)
CT = _core.encrypt_v2(KEY, PT)


def chunk_gate(start: int = 0, ct: bytes = CT) -> _core.ChunkGate:
    return _core.ChunkGate(KEY, ct[:32], len(ct), start)


def test_stored_chunk_size() -> None:
    assert _core.v2_stored_chunk_size(CT[:32]) == F == 65552
    assert _core.v2_stored_chunk_size(_core.encrypt_v2(KEY, b"", 17)[:32]) == (1 << 17) + 16
    bad = bytearray(CT[:32])
    bad[6] = 25
    with pytest.raises(DecryptionError):
        _core.v2_stored_chunk_size(bytes(bad))


@settings(max_examples=30, deadline=None)
@given(
    length=st.sampled_from([0, 1, S - 1, S, S + 1, 3 * S + 100]),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * F), max_size=8),
)
def test_the_chunk_gate_passes_a_good_file_for_any_split(length: int, cuts: list[int]) -> None:
    ct = _core.encrypt_v2(KEY, os.urandom(length))
    assert feed(chunk_gate(0, ct), chunked(ct, cuts), DecryptionError) == (ct, None)


@pytest.mark.parametrize(
    ("pos", "released"),
    [
        (8, 0),  # the salt: the header is not the one given
        (32, 0),
        (32 + F - 1, 0),
        (32 + F, 32 + F),
        (32 + 2 * F + 5, 32 + 2 * F),
        (len(CT) - 1, 32 + 3 * F),
    ],
)
def test_a_flipped_byte_releases_only_the_chunks_before_it(pos: int, released: int) -> None:
    bad = bytearray(CT)
    bad[pos] ^= 0x04
    for cuts in ([], [1000, 2 * F + 3], [F + 32]):
        gate = chunk_gate()
        out, err = feed(gate, chunked(bytes(bad), cuts), DecryptionError)
        assert out == CT[:released]
        assert isinstance(err, DecryptionError)
        with pytest.raises(DecryptionError):
            gate.update(b"")
        with pytest.raises(DecryptionError):
            gate.finish()


@pytest.mark.parametrize("cut", [0, 31, 32, 32 + F - 1, 32 + F, 32 + F + 1, len(CT) - 1])
def test_the_chunk_gate_refuses_truncation(cut: int) -> None:
    out, err = feed(chunk_gate(), [CT[:cut]], DecryptionError)
    assert out == (CT[: 32 + (cut - 32) // F * F] if cut >= 32 + F else b"")
    assert isinstance(err, DecryptionError)


def test_the_chunk_gate_refuses_extension() -> None:
    out, err = feed(chunk_gate(), [CT + b"\x00"], DecryptionError)
    assert out == CT
    assert isinstance(err, DecryptionError)


@pytest.mark.parametrize("k", range(4))
def test_the_chunk_gate_resumes_at_a_chunk(k: int) -> None:
    start = 32 + k * F
    rest = CT[start:]
    assert feed(chunk_gate(start), chunked(rest, [7, F]), DecryptionError) == (rest, None)
    bad = bytearray(rest)
    bad[-1] ^= 1
    out, err = feed(chunk_gate(start), [bytes(bad)], DecryptionError)
    assert out == CT[start : 32 + 3 * F]
    assert isinstance(err, DecryptionError)


@pytest.mark.parametrize("start", [1, 31, 33, 32 + F - 1, 32 + 4 * F, len(CT), -32])
def test_a_start_off_a_chunk_is_a_decryption_error(start: int) -> None:
    with pytest.raises(DecryptionError):
        chunk_gate(start)


def test_a_file_length_no_v2_file_can_have_is_a_decryption_error() -> None:
    with pytest.raises(DecryptionError):
        _core.ChunkGate(KEY, CT[:32], 32 + F + 3)
    with pytest.raises(DecryptionError):
        _core.ChunkGate(KEY, CT[:32], -1)
