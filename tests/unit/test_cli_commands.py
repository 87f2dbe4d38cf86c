"""The client commands' parsing: options before or after the command, the
server's URL, times, sizes and a function's spec."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edgeloader.cli import build_parser
from edgeloader.cli.commands.common import format_bytes, format_time, parse_since, server_url
from edgeloader.cli.commands.deploy_file import deployment
from edgeloader.cli.output import UsageError
from edgeloader.errors import ConfigError


def test_url_and_json_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGELOADER_URL", raising=False)
    parser = build_parser()
    before = parser.parse_args(["--url", "http://a:1", "--json", "keys", "list"])
    after = parser.parse_args(["keys", "list", "--url", "http://a:1", "--json"])
    for args in (before, after):
        assert server_url(args) == "http://a:1"
        assert args.json is True
    plain = parser.parse_args(["audit"])
    assert server_url(plain) == "http://127.0.0.1:8080"
    assert plain.json is False
    monkeypatch.setenv("EDGELOADER_URL", "http://box:9000/")
    assert server_url(parser.parse_args(["audit"])) == "http://box:9000"
    assert server_url(parser.parse_args(["audit", "--url", "http://c:2"])) == "http://c:2"
    with pytest.raises(ConfigError):
        server_url(parser.parse_args(["audit", "--url", "box:9000"]))


def test_the_password_is_never_an_option() -> None:
    parser = build_parser()
    for command in (["login"], ["unlock"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--password", "secret"])


def test_since_takes_epochs_iso_times_and_durations() -> None:
    now = 1_800_000_000.0
    assert parse_since("1795300000", now) == 1795300000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("15m", now) == now - 900
    assert parse_since("2h", now) == now - 7200
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-11-21T10:00:00Z", now) == parse_since("2026-11-21T10:00:00", now)
    with pytest.raises(UsageError, match="--since"):
        parse_since("last tuesday", now)


def test_times_and_sizes_for_people() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(None) == "-"
    assert format_bytes(11) == "11 B"
    assert format_bytes(3 * 1024 * 1024 + 7) == "3.0 MiB"
    assert format_bytes(5 * 1024**4) == "5120.0 GiB"


def deploy_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["fn", "deploy", "greet", "--image", "img:1", *argv])


def test_a_function_spec_from_flags_over_a_file(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "name": "ignored",
                "env": {"A": "1", "B": "2"},
                "limits": {"memoryMb": 128, "pids": 32},
                "queue": 2,
            }
        )
    )
    args = deploy_args(
        "--spec", str(spec_file), "--env", "B=3", "--env", "C=x=y", "--memory-mb", "64",
        "--command", "sh -c 'echo hi; exit 0'", "--concurrency", "2",
    )  # fmt: skip
    assert deployment(args).spec == {
        "env": {"A": "1", "B": "3", "C": "x=y"},
        "limits": {"memoryMb": 64, "pids": 32},
        "queue": 2,
        "concurrency": 2,
        "command": ["sh", "-c", "echo hi; exit 0"],
    }
    assert deployment(deploy_args()).spec == {}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        deployment(deploy_args("--env", "novalue"))
    with pytest.raises(UsageError, match="no such file"):
        deployment(deploy_args("--spec", str(tmp_path / "absent.json")))
    with pytest.raises(UsageError, match="--command"):
        deployment(deploy_args("--command", "sh -c 'unclosed"))
