"""Settings from the environment, and the CLI's handling of bad ones."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloader.cli import build_parser
from edgeloader.config import Settings
from edgeloader.errors import ConfigError

BASE = {"RESOURCE_API_URL": "http://api.local:8090/"}


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.resource_api_url == "http://api.local:8090"
    assert s.images_path == Path("/opt/edgeloader/images.enc")
    assert (s.host, s.port, s.api_version, s.cache_dir) == ("0.0.0.0", 8080, "latest", None)
    assert s.expected_images == ()


def test_every_variable_is_read() -> None:
    env = BASE | {
        "IMAGES_PATH": "/data/images.enc",
        "API_VERSION": "1.2",
        "EDGELOADER_API_SERVICES": "reg/a, reg/b,,",
        "EDGELOADER_CACHE_DIR": "/var/cache/models",
        "EDGELOADER_HOST": "127.0.0.1",
        "EDGELOADER_PORT": "9999",
        "DOCKER_HOST": "unix:///run/podman.sock",
        "EDGELOADER_CDN_HOST": "https://cdn.local",
        "EDGELOADER_CDN_DOWNLOADER_ACCESS_KEY": "dk",
        "EDGELOADER_UPSTREAM_JWT_KEY": "secret",
    }
    s = Settings.from_env(env)
    assert s.expected_images == ("reg/a:1.2", "reg/b:1.2")
    assert s.cache_dir == Path("/var/cache/models")
    assert (s.host, s.port, s.docker_host) == ("127.0.0.1", 9999, "unix:///run/podman.sock")
    assert (s.cdn.host, s.cdn.downloader_access_key) == ("https://cdn.local", "dk")
    assert s.upstream_jwt_key == "secret"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RESOURCE_API_URL is required"),
        ({"RESOURCE_API_URL": "ftp://x"}, "must be an http(s) URL"),
        (BASE | {"EDGELOADER_PORT": "eighty"}, "must be a whole number"),
        (BASE | {"EDGELOADER_PORT": "70000"}, "0-65535"),
        (BASE | {"EDGELOADER_CDN_HOST": "cdn.local"}, "EDGELOADER_CDN_HOST must be"),
    ],
)
def test_bad_configuration_is_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown settings: nope"):
        Settings.from_env(BASE).with_overrides(nope=1)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloader", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
        check=False,
    )


def test_serve_without_configuration_prints_one_line_and_exits_2() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edgeloader: RESOURCE_API_URL is required (the Resource API base URL)"
    ]


def test_the_device_cli_has_no_publisher_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "serve" in commands.choices
    for command in ("resource-api", "add-user", "publish"):
        assert command not in commands.choices


def test_publisher_help_lists_its_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeloader_publisher", "publish", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "resource" in result.stdout
    assert "archive" in result.stdout


def test_bad_usage_exits_2_with_one_line() -> None:
    result = run_cli("serve", "--port", "not-a-number")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_unusable_state_folder_is_a_run_time_failure_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"RESOURCE_API_URL": "http://127.0.0.1:9", "EDGELOADER_STATE_DIR": str(blocker / "x")}
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeloader: ")
    assert "Not a directory" in last
    assert "Traceback" not in result.stderr


def test_path_settings_are_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env(
        {
            "RESOURCE_API_URL": "http://api.example.org",
            "EDGELOADER_STATE_DIR": "state",
            "EDGELOADER_CACHE_DIR": "./cache",
            "EDGELOADER_FUNCTIONS_DIR": "fn",
            "IMAGES_PATH": "images.enc",
            "EDGELOADER_PUBLISHER_KEY": "keys/publisher.pem",
        }
    )
    assert settings.state_dir == tmp_path / "state"
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.functions_dir == tmp_path / "fn"
    assert settings.images_path == tmp_path / "images.enc"
    assert settings.publisher_key == tmp_path / "keys" / "publisher.pem"
