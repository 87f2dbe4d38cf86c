"""What an engine's refusal says to a caller: its reason, never its spool
files (:func:`edgeloader.upstream.engine.api.without_paths`)."""

from __future__ import annotations

import pytest

from edgeloader.upstream.engine.api import stream_error, without_paths


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "open /var/lib/docker/tmp/docker-import-123/repositories: no such file",
            "open …: no such file",
        ),
        (
            'parsing "localhost/tmp/podman-4ym_/image-tmp/libpod-images-load.tar149": '
            "invalid reference format",
            'parsing "localhost…": invalid reference format',
        ),
        (
            'untarring file "/var/tmp/x.tar": archive/tar: invalid tar header',
            'untarring file "…": archive/tar: invalid tar header',
        ),
        ("dir: open /tmp/a: not a directory", "dir: open …: not a directory"),
    ],
)
def test_paths_leave_the_message_and_its_reason_stays(message: str, expected: str) -> None:
    assert without_paths(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "archive/tar: invalid tar header",
        "docker.io/library/alpine:3.19 not found",
        "localhost/edge/detector:1.2 already exists",
        "ratio 1/2 of 10",
    ],
)
def test_names_that_only_contain_slashes_are_kept(message: str) -> None:
    assert without_paths(message) == message


def test_a_streamed_refusal_is_found_in_either_field() -> None:
    assert stream_error({"errorDetail": {"message": " bad tar "}}) == "bad tar"
    assert stream_error({"error": "bad tar"}) == "bad tar"
    assert stream_error({"stream": "Loaded image: x"}) is None
