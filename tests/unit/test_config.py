"""Settings from the environment and the configuration file, and the CLI's
handling of bad ones."""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from edgeloader.cli import build_parser
from edgeloader.config import Settings, file_keys
from edgeloader.errors import ConfigError
from tests.support.harness.net import LOOPBACK, dead_url, free_port, wait_http
from tests.support.harness.processes import REPO_ROOT, clean_env, spawn

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


# -- the configuration file -------------------------------------------------------------

TOML = """
resource_api_url = "http://api.local:8090/"
port = 9000
auth = "compat"
api_services = ["reg/a", "reg/b"]
warm_max = 8
download_max_rate = 1048576
run_retention = 3600
cdn_host = "https://cdn.local"
"""
YAML = """
resource_api_url: http://api.local:8090/
port: 9000
auth: compat
api_services: [reg/a, reg/b]
warm_max: 8
download_max_rate: 1048576
run_retention: 3600
cdn_host: https://cdn.local
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "text"), [("edgeloader.toml", TOML), ("edgeloader.yaml", YAML)])
def test_a_file_alone_configures_the_loader(tmp_path: Path, name: str, text: str) -> None:
    s = Settings.from_env({}, file=write(tmp_path, name, text))
    assert (s.resource_api_url, s.port, s.auth_mode) == ("http://api.local:8090", 9000, "compat")
    assert s.expected_images == ("reg/a:latest", "reg/b:latest")
    assert (s.functions.warm_max, s.functions.run_retention) == (8, 3600.0)
    assert (s.downloads.max_rate, s.cdn.host) == (1 << 20, "https://cdn.local")
    assert s.host == "0.0.0.0"  # what neither gives keeps its default


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    env = {
        "EDGELOADER_CONFIG": str(write(tmp_path, "edgeloader.toml", TOML)),
        "EDGELOADER_PORT": "9100",
        "EDGELOADER_API_SERVICES": "reg/c",
        "EDGELOADER_WARM_MAX": "  ",  # blank counts as unset
    }
    s = Settings.from_env(env)
    assert (s.port, s.api_services, s.functions.warm_max) == (9100, ("reg/c",), 8)
    assert s.auth_mode == "compat"


def test_the_file_given_wins_over_the_one_the_environment_names(tmp_path: Path) -> None:
    named = write(tmp_path, "named.toml", TOML)
    given = write(tmp_path, "given.toml", 'resource_api_url = "http://other.local"\n')
    s = Settings.from_env({"EDGELOADER_CONFIG": str(named)}, file=given)
    assert (s.resource_api_url, s.port) == ("http://other.local", 8080)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("warm_max = 300", "warm_max must be 0-256, got 300"),
        ("warm_max = true", "warm_max must be a number, not true"),
        ("max_runs = 1.5", "max_runs must be a whole number, got 1.5"),
        ('port = "eighty"', "port must be a whole number, got 'eighty'"),
        ("run_retention = -1", "run_retention must be positive, got -1"),
        ('auth = "open"', "auth must be one of required, compat"),
        ('upload_format = "v3"', "upload_format must be v1 or v2, got 'v3'"),
        ("api_version = 1.2", "api_version must be text (in quotes)"),
        ('cdn_host = "cdn.local"', "cdn_host must be an http(s) URL, got 'cdn.local'"),
        (
            "download_part_size = 134217728",
            "download_inflight_max must be at least download_part_size",
        ),
    ],
)
def test_a_bad_value_in_the_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = write(tmp_path, "edgeloader.toml", f'resource_api_url = "http://api.local"\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, file=path)
    assert caught.value.detail == f"{path}: {problem}"


def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "edgeloader.toml", TOML)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"EDGELOADER_WARM_MAX": "300"}, file=path)
    assert caught.value.detail == "EDGELOADER_WARM_MAX must be 0-256, got 300"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("warm_mx", " (did you mean 'warm_max'?)"),
        ("EDGELOADER_WARM_MAX", " (did you mean 'warm_max'?)"),
        ("colour", ""),
    ],
)
def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path, key: str, hint: str) -> None:
    path = write(tmp_path, "edgeloader.toml", f"{TOML}{key} = 3\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, file=path)
    assert caught.value.detail == f"{path}: unknown key {key!r}{hint}"


def test_a_missing_file_is_an_error_however_it_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    message = f"configuration file {missing} does not exist"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Settings.from_env(BASE, file=missing)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Settings.from_env(BASE | {"EDGELOADER_CONFIG": str(missing)})


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("bad.toml", 'port = "8080\n', "Illegal character"),
        ("bad.yaml", "port: [8080\n", "expected ',' or ']'"),
        ("list.yaml", "- port\n", "must hold keys with values"),
        ("settings.ini", "port = 8080\n", "must end in .toml, .yaml or .yml"),
    ],
)
def test_an_unreadable_file_is_one_line(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(BASE, file=path)
    assert str(path) in caught.value.detail
    assert problem in caught.value.detail
    assert "\n" not in caught.value.detail


def test_relative_paths_in_the_file_are_relative_to_its_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(
        folder,
        "edgeloader.yaml",
        'resource_api_url: "http://api.local"\n'
        "state_dir: state\n"
        "cache_dir: ../cache\n"
        "functions_dir: /srv/fn\n"
        "publisher_key: keys/publisher.pem\n",
    )
    s = Settings.from_env({"IMAGES_PATH": "images.enc"}, file=Path("etc/edgeloader.yaml"))
    assert s.state_dir == folder / "state"
    assert s.cache_dir == tmp_path / "cache"
    assert s.functions_dir == Path("/srv/fn")
    assert s.publisher_key == folder / "keys" / "publisher.pem"
    assert s.images_path == tmp_path / "images.enc"  # the environment's: the working directory
    assert path.exists()


def test_serve_with_a_bad_file_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(
        tmp_path, "edgeloader.toml", 'resource_api_url = "http://api.local"\nport = 70000\n'
    )
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"edgeloader: {path}: port must be 0-65535, got 70000"
    ]


async def test_serve_with_a_config_file_serves(tmp_path: Path) -> None:
    """`edgeloader serve --config FILE` as its own process, configured by
    the file alone: it answers /health where the file says, and keeps its
    state in the folder the file names relative to itself."""
    folder = tmp_path / "etc"
    folder.mkdir()
    port = free_port()
    path = write(
        folder,
        "edgeloader.toml",
        f'resource_api_url = "{dead_url()}"\n'
        f'host = "{LOOPBACK}"\n'
        f"port = {port}\n"
        'state_dir = "state"\n',
    )
    args = ["-m", "edgeloader", "serve", "--config", str(path), "--log-level", "WARNING"]
    with contextlib.ExitStack() as cleanup:
        child = spawn("loader", args, clean_env(), tmp_path, cleanup)
        url = f"http://{LOOPBACK}:{port}"
        await wait_http(f"{url}/health", alive=child.check_alive)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
            assert resp.status == 200
        assert (folder / "state").is_dir()


def test_the_example_file_loads_and_names_every_setting(tmp_path: Path) -> None:
    example = (REPO_ROOT / "deploy" / "edgeloader.toml.example").read_text()
    shipped = Settings.from_env({}, file=write(tmp_path, "shipped.toml", example))
    assert shipped.resource_api_url == "https://api.example.org"
    everything = re.sub(r"(?m)^# (\w+ = )", r"\1", example)
    keys = re.findall(r"(?m)^(\w+) = ", everything)
    assert sorted(keys) == sorted(file_keys().values())
    loaded = Settings.from_env({}, file=write(tmp_path, "everything.toml", everything))
    assert loaded.functions.warm_max == 4
