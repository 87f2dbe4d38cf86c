"""The Dockerfile builds, on podman and on Docker Engine, and its image runs.

No registry and no rustup here, so the image is built the way
docs/deployment.md gives for that case: its ``prebuilt`` stage, over a
Python 3.11 base made from Debian's packages (``scripts/image-base.sh``,
imported into the engine), with the wheel ``maturin`` builds from this tree
and the wheels of its dependencies in the build context's ``dist/``, built
with no network (``PIP_NO_INDEX=1``). Docker's CLI without BuildKit uses
the legacy builder, which is the case the Dockerfile's defaults are for.

The image is then run: ``edgeloader --help``, and ``edgeloader serve``
answering ``/health``, as the image's unprivileged user.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker import DockerService
from tests.support.engines import EngineService, remove_image
from tests.support.podman import PodmanService

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "image-test"
IMAGE = "localhost/edgeloader-image-test:1"
BUILD_TIMEOUT = 600.0


@pytest.fixture(scope="session")
def base_tar() -> Path:
    """The Debian-made base image's tarball (cached by the script)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image-base.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"scripts/image-base.sh failed:\n{result.stderr[-4000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context with this tree's wheel and its dependencies' wheels
    in ``dist/`` (and the ``pyproject.toml`` the prebuilt stage names)."""
    context = tmp_path_factory.mktemp("image-context")
    dist = context / "dist"
    dist.mkdir()
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "maturin"), "build", "--release", "--locked", "--quiet", "-o", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1200,
    )
    (wheel,) = dist.glob("edgeloader-*.whl")
    for dependency in _dependency_wheels(wheel).iterdir():
        shutil.copy2(dependency, dist / dependency.name)
    shutil.copy2(ROOT / "pyproject.toml", context / "pyproject.toml")
    return context


def _dependency_wheels(wheel: Path) -> Path:
    """The wheels of ``wheel``'s dependencies at requirements/dev.lock's
    versions, made once per lock and pyproject.toml into ``.cache``."""
    key = hashlib.sha256(
        (ROOT / "requirements" / "dev.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()[:16]
    folder = CACHE / f"wheels-{key}"
    if folder.is_dir():
        return folder
    partial = CACHE / f"wheels-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--quiet", "--wheel-dir", str(partial)),
            *("-c", str(ROOT / "requirements" / "dev.lock")),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stderr[-4000:]}"
    for own in partial.glob("edgeloader-*.whl"):
        own.unlink()
    partial.rename(folder)
    return folder


def _cli(
    engine: EngineService, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[bytes]:
    """The engine's own CLI (``podman`` or ``docker``) against the service."""
    if isinstance(engine, PodmanService):
        return engine.run_podman(*args, check=False, timeout=timeout)
    assert isinstance(engine, DockerService)
    return engine.run_docker(*args, check=False, timeout=timeout)


def _out(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")[-6000:]


@pytest.fixture(scope="session")
def built_image(engine: EngineService, base_tar: Path, build_context: Path) -> Iterator[str]:
    """The prebuilt image, built with the engine's CLI from the Dockerfile."""
    base = f"localhost/edgeloader-image-base:{base_tar.stem.rsplit('-', 1)[-1]}"
    imported = _cli(engine, "import", str(base_tar), base, timeout=BUILD_TIMEOUT)
    assert imported.returncode == 0, _out(imported)
    build = _cli(
        engine,
        "build",
        *("--file", str(ROOT / "Dockerfile")),
        *("--target", "prebuilt"),
        *("--build-arg", f"BASE_IMAGE={base}"),
        *("--build-arg", "PIP_NO_INDEX=1"),
        *("--network", "none"),
        *("--tag", IMAGE),
        str(build_context),
        timeout=BUILD_TIMEOUT,
    )
    assert build.returncode == 0, f"{engine.kind} build failed:\n{_out(build)}"
    try:
        yield IMAGE
    finally:
        remove_image(engine, IMAGE)
        remove_image(engine, base)


def test_image_runs_the_cli_as_an_unprivileged_user(
    engine: EngineService, built_image: str
) -> None:
    inspected = _cli(engine, "image", "inspect", built_image)
    assert inspected.returncode == 0, _out(inspected)
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["User"] == "edgeloader"
    assert config["Entrypoint"] == ["edgeloader"]
    assert config["Cmd"] == ["serve"]

    helped = _cli(engine, "run", "--rm", "--network", "none", built_image, "--help")
    assert helped.returncode == 0, _out(helped)
    assert "serve" in helped.stdout.decode()


def test_image_serves_health_as_its_user(engine: EngineService, built_image: str) -> None:
    port = _free_port()
    name = f"edgeloader-image-test-{port}"
    started = _cli(
        engine,
        *("run", "--detach", "--name", name, "--network", "host"),
        *("--env", "RESOURCE_API_URL=http://127.0.0.1:9"),
        *("--env", "EDGELOADER_HOST=127.0.0.1", "--env", f"EDGELOADER_PORT={port}"),
        built_image,
    )
    assert started.returncode == 0, _out(started)
    try:
        status, body = _wait_for_health(port, engine, name)
        assert status == 200, body
        assert json.loads(body)
        # The service runs as the image's user, not as root.
        uid = _cli(engine, "exec", name, "id", "-u")
        assert uid.stdout.decode().strip() == "10001", _out(uid)
    finally:
        _cli(engine, "rm", "--force", name)


def _wait_for_health(port: int, engine: EngineService, name: str) -> tuple[int, bytes]:
    deadline = time.monotonic() + 60
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError) as exc:
            if time.monotonic() > deadline:
                logs = _out(_cli(engine, "logs", name))
                pytest.fail(f"the image's service did not answer /health on {port}: {exc}\n{logs}")
            time.sleep(0.2)
        finally:
            connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
