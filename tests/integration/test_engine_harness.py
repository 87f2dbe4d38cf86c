"""The engine services of tests/support, on both engines: each starts in a
folder of its own, builds a busybox image, saves it, loads it back through
the compatible ``POST /images/load`` and runs a container; and each stops
without leaving a process, a mount or its folder behind."""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.docker import DockerService
from tests.support.engines import (
    COMPAT_API,
    MAX_SOCKET_PATH,
    REF_LABEL,
    EngineError,
    EngineKind,
    EngineService,
    image_exists,
    import_busybox_image,
    mount_points,
    remove_image,
    save_images,
)
from tests.support.podman import PodmanService

KINDS: tuple[EngineKind, ...] = ("podman", "docker")
REF = "localhost/edgeloader-harness:1"


def make_service(kind: EngineKind, base_dir: Path) -> EngineService:
    if kind == "podman":
        return PodmanService(base_dir)
    return DockerService(base_dir)


@pytest.fixture(scope="module", params=KINDS)
def service(request: pytest.FixtureRequest) -> Iterator[EngineService]:
    """A short-pathed folder: podman's clean-up wants a run root of at most
    50 characters."""
    kind: EngineKind = request.param
    with make_service(kind, Path(tempfile.mkdtemp(prefix=f"{kind}-"))) as engine:
        yield engine


def api_json(service: EngineService, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    status, answer = service.request(method, f"{COMPAT_API}{path}", body=data, headers=headers)
    assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {answer!r}"
    return json.loads(answer) if answer.strip() else None


def run_container(service: EngineService, command: list[str]) -> tuple[int, bytes]:
    """Creates, starts, waits on and removes a container of ``REF``; returns
    its exit code and its raw (multiplexed) log stream."""
    created = api_json(
        service,
        "POST",
        "/containers/create",
        {"Image": REF, "Cmd": command, "HostConfig": {"NetworkMode": "none"}},
    )
    container = created["Id"]
    try:
        api_json(service, "POST", f"/containers/{container}/start")
        waited = api_json(service, "POST", f"/containers/{container}/wait")
        status, logs = service.request(
            "GET", f"{COMPAT_API}/containers/{container}/logs?stdout=1&stderr=1"
        )
        assert status == 200, logs
        return int(waited["StatusCode"]), logs
    finally:
        service.request("DELETE", f"{COMPAT_API}/containers/{container}?force=1")


def processes_mentioning(path: Path) -> list[int]:
    needle = str(path).encode() + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_service_answers_where_it_says(service: EngineService) -> None:
    assert service.running
    assert len(str(service.socket_path)) <= MAX_SOCKET_PATH
    assert service.env["DOCKER_HOST"] == service.docker_host == f"unix://{service.socket_path}"
    assert service.request("GET", "/_ping") == (200, b"OK")
    version = api_json(service, "GET", "/version")
    names = " ".join(c.get("Name", "") for c in version.get("Components") or []).lower()
    assert ("podman" in names) == (service.kind == "podman"), version


def test_busybox_image_saves_and_loads_back(service: EngineService, tmp_path: Path) -> None:
    image_id = import_busybox_image(service, REF)
    assert image_id.startswith("sha256:")
    info = api_json(service, "GET", f"/images/{quote(REF, safe='/:')}/json")
    assert info["Id"] == image_id
    assert info["Config"]["Labels"][REF_LABEL] == REF
    assert info["Config"]["Cmd"] == ["/bin/sh"]

    archive = save_images(service, [REF], tmp_path / "image.tar")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert [REF] in [entry["RepoTags"] for entry in manifest]

    remove_image(service, REF)
    assert not image_exists(service, REF)
    remove_image(service, REF)  # gone already: no error
    with pytest.raises(EngineError, match="HTTP 404"):
        remove_image(service, REF, missing_ok=False)

    status, answer = service.request(
        "POST",
        f"{COMPAT_API}/images/load",
        body=archive.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
        timeout=120.0,
    )
    assert status == 200, answer
    assert b"errorDetail" not in answer
    assert REF.encode() in answer  # "Loaded image: localhost/edgeloader-harness:1"
    assert image_exists(service, REF)

    code, logs = run_container(service, ["sh", "-c", "echo hello from $(cat /etc/edgeloader-ref)"])
    assert code == 0
    assert f"hello from {REF}\n".encode() in logs


def test_engine_cli_runs_against_the_service(service: EngineService) -> None:
    if not image_exists(service, REF):
        import_busybox_image(service, REF)
    command = ("run", "--rm", "--network", "none", REF, "echo", "from the cli")
    if isinstance(service, DockerService):
        result = service.run_docker(*command)
    else:
        assert isinstance(service, PodmanService)
        result = service.run_podman(*command)
    assert result.stdout == b"from the cli\n"


@pytest.mark.parametrize("kind", KINDS)
def test_stop_leaves_nothing_behind(kind: EngineKind, tmp_path: Path) -> None:
    """A container still running at stop() is killed, and everything goes:
    processes, mounts, the folder. Stopping again is no error."""
    base = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
    service = make_service(kind, base)
    with service:
        import_busybox_image(service, REF)
        created = api_json(
            service,
            "POST",
            "/containers/create",
            {"Image": REF, "Cmd": ["sleep", "600"], "HostConfig": {"NetworkMode": "none"}},
        )
        api_json(service, "POST", f"/containers/{created['Id']}/start")
        assert processes_mentioning(base)
    assert not service.running
    assert not base.exists()
    assert processes_mentioning(base) == []
    assert not [m for m in mount_points() if m.startswith(f"{base}/")]
    service.stop()


def test_two_docker_services_run_at_once(tmp_path: Path) -> None:
    """One in pytest's long tmp_path (its sockets go to a short folder), one
    in a short folder; each has its own images."""
    long_base = tmp_path / ("x" * 60) / "docker"
    with (
        DockerService(long_base) as first,
        DockerService(Path(tempfile.mkdtemp(prefix="docker-"))) as second,
    ):
        assert len(str(first.socket_path)) <= MAX_SOCKET_PATH
        assert first.socket_path.parent != long_base
        import_busybox_image(first, REF)
        assert image_exists(first, REF)
        assert not image_exists(second, REF)
        result = first.run_docker("run", "--rm", "--network", "none", REF, "echo", "first")
        assert result.stdout == b"first\n"
        short_dir = first.socket_path.parent
    assert not long_base.exists()
    assert not short_dir.exists()


def test_docker_failed_start_cleans_up() -> None:
    """A daemon that exits at once fails start() with its output, and stops
    the containerd started for it."""
    base = Path(tempfile.mkdtemp(prefix="docker-"))
    service = DockerService(base, dockerd="false")
    with pytest.raises(EngineError, match="docker service exited with 1"):
        service.start()
    assert not service.running
    assert not base.exists()
    assert processes_mentioning(base) == []
    service.stop()
