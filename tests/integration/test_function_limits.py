"""What a run may not take from the box, on each engine: the host's disk
(run folder, output, records), the loader's mounts unseen by the engine,
and builds that reach outside (docs/functions.md, docs/security.md).

The disk tests sample, while the function writes, every file on a
disk-backed file system under the loader's state folder and the engine's
storage, and bound how much they grew.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from edgeloader.functions.probe import MountProbe
from edgeloader.upstream.engine import Engine
from tests.support.engines import EngineService
from tests.support.functions import IMAGE, Api, build_form, context_tar, sh
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import LOOPBACK, free_port
from tests.support.stack import ADMIN, Stack

MiB = 1 << 20
#: How much the disk may grow while a run writes 64 MiB: the engine's copy
#: of the container's root (vfs storage copies the image), not the writes.
BOUND = 8 * MiB

# Tries to write 64 MiB into a 2 MiB run folder, then reports what happened
# and goes on.
FILL = """
busybox dd if=/dev/zero of=big bs=65536 count=1024 2> /tmp/dd.err; code=$?
size=$(busybox wc -c < big)
rm big
printf '{"dd":%s,"size":%s,"err":"%s"}' "$code" "$size" \
  "$(busybox tr -d '\\n"' < /tmp/dd.err | busybox head -c 160)" > result.json
"""

# 64 MiB on stdout, then a result.
FLOOD = """
busybox yes 0123456789abcdef | busybox head -c 67108864
echo '{"printed": true}' > result.json
"""


def _memory_mounts() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as lines:
        for line in lines:
            fields = line.split(" ")
            if fields[fields.index("-") + 1] in ("tmpfs", "ramfs", "proc", "sysfs"):
                points.append(fields[4].replace("\\040", " ") + "/")
    return points


def disk_bytes(roots: list[Path]) -> int:
    """The bytes of every file under ``roots`` that sits on a disk."""
    memory = _memory_mounts()
    total = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            if any((folder + "/").startswith(point) for point in memory):
                dirs[:] = []
                continue
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


@contextlib.contextmanager
def disk_growth(roots: list[Path]) -> Iterator[list[int]]:
    """Samples :func:`disk_bytes` until the block ends; yields a list that
    then holds the largest growth seen, in bytes."""
    start = disk_bytes(roots)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], disk_bytes(roots) - start)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], disk_bytes(roots) - start)


async def test_a_write_past_disk_mb_fails_inside_and_the_run_goes_on(
    api: Api, engine: EngineService, tmp_path: Path
) -> None:
    await api.deploy("fill", command=sh(FILL), limits={"diskMb": 2})
    with disk_growth([tmp_path, engine.base_dir]) as grew:
        run = await api.invoke("fill")
    assert run["status"] == "succeeded", run
    assert run["result"]["dd"] != 0
    assert "No space left" in run["result"]["err"]
    assert run["result"]["size"] <= 2 * MiB
    # The container's own copy of the image (vfs) is the growth there is.
    assert grew[0] < BOUND, f"the host's disk grew by {grew[0]} bytes"
    # The folder went with the run; what it left is in the record.
    runs = tmp_path / "state" / "functions" / "runs"
    assert list(runs.iterdir()) == []


async def test_a_flood_on_stdout_stays_off_the_hosts_disk(
    api: Api, engine: EngineService, tmp_path: Path
) -> None:
    await api.deploy("flood", command=sh(FLOOD))
    with disk_growth([tmp_path, engine.base_dir]) as grew:
        run = await api.invoke("flood")
    assert run["status"] == "succeeded", run
    assert grew[0] < BOUND, f"the host's disk grew by {grew[0]} bytes"
    output = await api.get(f"/api/runs/{run['runId']}/logs")
    assert output["truncated"] is True
    assert len(output["stdout"]) == MiB  # the cap, EDGELOADER_RUN_OUTPUT_MAX
    assert output["stdout"].startswith("0123456789abcdef\n")


async def test_disk_and_tmpfs_must_fit_in_the_memory_limit(api: Api) -> None:
    status, body, _ = await api.call(
        "POST",
        "/api/functions",
        api.admin,
        json={"name": "big", "image": IMAGE, "limits": {"memoryMb": 64, "diskMb": 60}},
    )
    assert status == 422
    assert "diskMb + tmpfsMb" in body["detail"]


# -- the engine must see the loader's mounts -------------------------------------------


async def test_the_probe_finds_the_loaders_tmpfs_through_the_engine(
    engine: EngineService, tmp_path: Path
) -> None:
    client = Engine(engine.docker_host)
    try:
        await MountProbe(client, tmp_path / "probe", "/app/functions").check()
    finally:
        await client.close()
    assert not (tmp_path / "probe").exists()  # unmounted and removed


async def test_a_loader_in_a_private_mount_namespace_refuses_functions(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str, tmp_path: Path
) -> None:
    """As under systemd's ProtectSystem=: the engine would bind the disk
    folder under the loader's tmpfs, so no run starts."""
    stack = await make_stack()
    state = tmp_path / "private-state"
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:
        _, url = await start_loader_process(
            stack.api_url,
            state,
            tmp_path,
            cleanup,
            launcher=["unshare", "-m", "--propagation", "slave"],
            **env,
        )
        api = Api(stack.http, url)
        api.admin = await api.login(ADMIN)
        await api.deploy("hello", command=sh("echo '\"hi\"' > result.json"))
        for _ in range(2):  # the refusal holds, and is not a failed run
            status, body, _ = await api.call(
                "POST", "/api/functions/hello/invoke", api.admin, json={}
            )
            assert status == 503, body
            assert "does not see the loader's run folders" in body["detail"]
            assert "docs/deployment.md" in body["detail"]
        assert (await api.get("/api/runs"))["runs"] == []
        assert list((state / "functions" / "runs").iterdir()) == []
        status_code, listing = engine.request("GET", "/v1.41/containers/json?all=true")
        assert status_code == 200
        assert "edgeloader-probe" not in listing.decode()


# -- builds that would reach outside ---------------------------------------------------


async def test_a_build_that_fetches_from_a_url_is_refused_before_the_engine(api: Api) -> None:
    fetched: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(text="payload")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        dockerfile = f"FROM {IMAGE}\nADD http://{LOOPBACK}:{port}/x /x\n".encode()
        form = build_form(context_tar({"Dockerfile": dockerfile}))
        status, body, _ = await api.call("POST", "/api/functions/f/build", api.admin, data=form)
    finally:
        await runner.cleanup()
    assert status == 422, body
    assert "line 2: ADD from a URL" in body["detail"]
    assert fetched == []


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ({"Containerfile": f"FROM {IMAGE}\nRUN exit 1\n"}, "holds Containerfile"),
        ({"./Dockerfile": f"FROM {IMAGE}\nRUN exit 1\n"}, "two Dockerfile"),
        ({}, ""),  # the plain context builds: the refusals are what differs
    ],
)
async def test_a_context_with_a_second_build_file_is_refused(
    api: Api, files: dict[str, str], detail: str
) -> None:
    entries = {"Dockerfile": f"FROM {IMAGE}\n".encode()}
    entries |= {name: text.encode() for name, text in files.items()}
    form = build_form(context_tar(entries))
    status, body, _ = await api.call("POST", "/api/functions/two/build", api.admin, data=form)
    if detail:
        assert status == 422, body
        assert detail in body["detail"]
    else:
        assert status == 201, body


async def test_a_small_gzip_that_unpacks_past_the_cap_is_413(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await make_api(build_context_max=4 * MiB)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {IMAGE}\n".encode()), ("zeros", bytes(64 * MiB))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(buffer.getvalue(), 9)
    assert len(packed) < MiB
    form = build_form(packed)
    status, body, _ = await api.call("POST", "/api/functions/bomb/build", api.admin, data=form)
    assert status == 413, body
    assert "unpacked" in body["detail"]
