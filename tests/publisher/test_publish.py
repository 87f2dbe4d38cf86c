"""Publishing images.enc: the library function and the command."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from edgeloader import _core, crypto
from edgeloader_publisher.archive import CHUNK_SIZE, encrypt_archive
from edgeloader_publisher.cli import build_parser, main
from edgeloader_publisher.resource_api.server import KEY_FRAGMENT_FILE

FRAGMENT = bytes(range(64))


def decrypt(path: Path, fragment: bytes = FRAGMENT) -> bytes:
    """Either format, with the oracle-free one-shot functions of the core."""
    data, key = path.read_bytes(), hashlib.sha256(fragment).digest()
    if data[:4] == b"ELD2":
        return _core.decrypt_v2(key, data)
    return crypto.decrypt_v1(key, data)


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("size", [0, 1, 16, CHUNK_SIZE, 2 * CHUNK_SIZE + 7])
def test_round_trip(tmp_path: Path, size: int, fmt: int) -> None:
    src, dst = tmp_path / "image.tar", tmp_path / "images.enc"
    plain = os.urandom(size)
    src.write_bytes(plain)
    seen: list[int] = []
    written = asyncio.run(encrypt_archive(src, dst, FRAGMENT, seen.append, fmt))
    assert written == dst.stat().st_size
    assert (dst.read_bytes()[:4] == b"ELD2") == (fmt == 2)
    if fmt == 1:
        assert written == _core.BLOCK_SIZE + _core.v1_padded_length(size)
    else:
        assert _core.v2_plaintext_length(dst.read_bytes()[:32], written) == size
    assert decrypt(dst) == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "images.enc"]
    assert sum(seen) == size


def test_failure_leaves_the_old_output_and_no_temp_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "image.tar", tmp_path / "images.enc"
    src.write_bytes(os.urandom(3 * CHUNK_SIZE))
    dst.write_bytes(b"previous")

    done = 0

    def boom(n: int) -> None:
        nonlocal done
        done += n
        if done > CHUNK_SIZE:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        asyncio.run(encrypt_archive(src, dst, FRAGMENT, boom))
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "images.enc"]


# -- publish archive --------------------------------------------------------------------


def parse(*argv: str) -> None:
    build_parser().parse_args(argv)


def run(*argv: str) -> int:
    return main(argv)


def test_publish_with_a_fragment_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst, frag = tmp_path / "image.tar", tmp_path / "images.enc", tmp_path / "fragment"
    plain = os.urandom(100_000)
    src.write_bytes(plain)
    frag.write_bytes(FRAGMENT)
    assert run("publish", "archive", str(src), "-o", str(dst), "--fragment-file", str(frag)) == 0
    assert decrypt(dst) == plain
    out = capsys.readouterr()
    assert str(dst.stat().st_size) in out.out
    assert out.err == ""  # small files print no progress


def test_publish_from_the_data_dir_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "api"
    data_dir.mkdir()
    fragment = os.urandom(64)
    (data_dir / KEY_FRAGMENT_FILE).write_bytes(fragment)
    src, dst = tmp_path / "image.tar", tmp_path / "images.enc"
    plain = os.urandom(17 * CHUNK_SIZE)
    src.write_bytes(plain)
    assert run("publish", "archive", str(src), "-o", str(dst), "--data-dir", str(data_dir)) == 0
    assert decrypt(dst, fragment) == plain
    err = capsys.readouterr().err
    assert "(100%)" in err
    assert "17 / 17 MiB" in err


@pytest.mark.parametrize("case", ["no-image", "no-fragment", "empty-fragment", "no-out-dir"])
def test_publish_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    src, frag = tmp_path / "image.tar", tmp_path / "fragment"
    dst = tmp_path / ("missing/images.enc" if case == "no-out-dir" else "images.enc")
    if case != "no-image":
        src.write_bytes(b"tar")
    if case != "no-fragment":
        frag.write_bytes(b"" if case == "empty-fragment" else FRAGMENT)
    assert run("publish", "archive", str(src), "-o", str(dst), "--fragment-file", str(frag)) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not dst.exists()


def test_publish_without_a_fragment_in_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "image.tar"
    src.write_bytes(b"tar")
    argv = ["publish", "archive", str(src), "-o", str(tmp_path / "x.enc")]
    assert run(*argv, "--data-dir", str(tmp_path / "empty")) == 2
    assert "start the resource-api once" in capsys.readouterr().err


def test_data_dir_and_fragment_file_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse("publish", "archive", "a", "-o", "b", "--data-dir", "d", "--fragment-file", "f")
