"""Functions on each engine: deploy, invoke, isolation seen from
inside, deadlines, failures, bad input, scheduling, restart and roles.

Every function runs the same busybox image with a different command; the
scripts use busybox's shell builtins and ``busybox APPLET`` for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.support.engines import EngineService, import_busybox_image, remove_image
from tests.support.functions import (
    BASE_IMAGE,
    IMAGE,
    JSON,
    Api,
    build_form,
    containers_of,
    context_tar,
    sh,
)
from tests.support.harness.loader import start_loader_process
from tests.support.harness.net import wait_for
from tests.support.harness.processes import REPO_ROOT
from tests.support.stack import ADMIN, Stack

ECHO = """
cat request.json > result.json
echo '{"step": "done"}' > logs.json
echo '--config'; cat .env.config
echo '--env'; env
"""

# Reports what a function can see and do from inside its container.
PROBE = """
while read -r key value; do
  case "$key" in CapEff:) cap=$value ;; NoNewPrivs:) nnp=$value ;; esac
done < /proc/self/status
if ( : > /probe ) 2>/dev/null; then root=writable; else root=read-only; fi
if ( : > /tmp/probe ) 2>/dev/null; then tmp=writable; else tmp=read-only; fi
found=$(busybox find / -path /proc -prune -o -path /sys -prune -o -name "*$OTHER_RUN*" -print \
  2>/dev/null | busybox wc -l)
printf '{"capEff":"%s","noNewPrivs":"%s","root":"%s","tmp":"%s","interfaces":"%s",' \
  "$cap" "$nnp" "$root" "$tmp" "$(echo $(ls /sys/class/net))" > result.json
printf '"uid":%s,"gid":%s,"otherRunSeen":%s,"app":"%s"}' \
  "$(id -u)" "$(id -g)" "$found" "$(echo $(ls -a /app))" >> result.json
cat /proc/self/mountinfo
"""

# Starts many more processes than its pids limit allows, then counts them.
# The shell gives up at the first fork that fails, so the loop is a subshell.
FORK_BOMB = """
( i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i + 1)); done ) 2>/dev/null
set -- /proc/[0-9]*
echo "{\\"processes\\": $#}" > result.json
"""


# -- deploy and invoke ----------------------------------------------------------


async def test_deploy_and_invoke_echoes_the_request_with_env_and_env_config(
    api: Api, engine: EngineService
) -> None:
    created = await api.deploy("echo", command=sh(ECHO), env={"GREETING": "hello"})
    assert created["version"] == 1
    assert created["image"] == IMAGE
    assert created["imageId"]
    assert created["envKeys"] == ["GREETING"]
    assert "env" not in created
    assert created["limits"] == {
        "memoryMb": 128,
        "cpus": 0.5,
        "pids": 64,
        "timeoutS": 30,
        "tmpfsMb": 16,
        "diskMb": 16,
    }
    assert (created["concurrency"], created["queue"], created["user"]) == (1, 8, 65534)

    request = {"question": "ping", "n": [1, 2, 3]}
    run = await api.invoke("echo", request)
    assert run["status"] == "succeeded", (run["error"], run)
    assert run["result"] == request
    assert (run["function"], run["version"], run["image"]) == ("echo", 1, IMAGE)
    assert run["exitCode"] == 0
    assert run["error"] is None
    assert run["queuedAt"] <= run["startedAt"] <= run["finishedAt"]
    assert run["durationMs"] >= 0

    logs = await api.get(f"/api/runs/{run['runId']}/logs")
    assert logs["truncated"] is False
    assert logs["logs"] == {"step": "done"}
    assert logs["stderr"] == ""
    config, env = logs["stdout"].split("--env\n")
    expected = {
        "GREETING=hello",
        f"EDGELOADER_RUN_ID={run['runId']}",
        "EDGELOADER_FUNCTION=echo",
    }
    assert expected == set(config.removeprefix("--config\n").splitlines())
    assert expected <= set(env.splitlines())

    assert await api.get(f"/api/runs/{run['runId']}") == run
    assert (await api.get("/api/runs?function=echo"))["runs"] == [run]
    assert (await api.get("/api/functions/echo/executions")) == {"executions": [run], "total": 1}
    stats = await api.get("/api/functions/echo/stats")
    assert stats == {
        "runs": 1,
        "succeeded": 1,
        "failed": 0,
        "timeouts": 0,
        "oom": 0,
        "p50Ms": run["durationMs"],
        "p95Ms": run["durationMs"],
        "lastRunAt": run["queuedAt"],
        "cpuMsP50": run["cpuMs"],
        "cpuMsP95": run["cpuMs"],
        "memoryPeakMbMax": run["memoryPeakMb"],
        "coldStarts": 1,
    }
    assert [f["name"] for f in (await api.get("/api/functions"))["functions"]] == ["echo"]
    assert containers_of(engine, run["runId"]) == []

    # Audited: who, which function, the outcome, the duration.
    entries = (await api.get("/api/audit?limit=100"))["entries"]
    deploy = next(e for e in entries if e["action"] == "function.deploy")
    invoke = next(e for e in entries if e["action"] == "function.invoke")
    assert (deploy["subject"], deploy["resource"], deploy["outcome"]) == (
        f"user:{ADMIN[0]}",
        "echo",
        "ok",
    )
    assert deploy["detail"].startswith("version 1, ")
    assert deploy["detail"].endswith(" ms")
    assert (invoke["resource"], invoke["outcome"]) == ("echo", "succeeded")
    assert invoke["detail"] == f"run {run['runId']}, version 1, {run['durationMs']} ms"


async def test_update_makes_a_new_version_and_delete_keeps_the_runs(api: Api) -> None:
    await api.deploy("versions", command=sh("echo 1 > result.json"))
    status, updated, _ = await api.call(
        "PUT",
        "/api/functions/versions",
        api.admin,
        json={"image": IMAGE, "command": sh("echo 2 > result.json"), "limits": {"pids": 32}},
    )
    assert status == 200, updated
    assert updated["version"] == 2
    assert updated["limits"]["pids"] == 32
    run = await api.invoke("versions")
    assert (run["version"], run["result"]) == (2, 2)
    status, _, _ = await api.call("DELETE", "/api/functions/versions", api.admin)
    assert status == 200
    assert (await api.call("GET", "/api/functions/versions", api.admin))[0] == 404
    assert (await api.get(f"/api/runs/{run['runId']}"))["status"] == "succeeded"
    status, _, _ = await api.call(
        "PUT", "/api/functions/versions", api.admin, json={"image": IMAGE}
    )
    assert status == 404


# -- isolation seen from inside ---------------------------------------------------


async def test_isolation_seen_from_inside(api: Api) -> None:
    other = await api.deploy("other", command=sh("echo '{}' > result.json"))
    other_run = await api.invoke(other["name"])
    await api.deploy("probe", command=sh(PROBE), env={"OTHER_RUN": other_run["runId"]})
    run = await api.invoke("probe")
    assert run["status"] == "succeeded", (run["error"], run)
    seen = run["result"]
    assert seen["capEff"] == "0000000000000000"
    assert seen["noNewPrivs"] == "1"
    assert seen["root"] == "read-only"
    assert seen["tmp"] == "writable"
    assert seen["interfaces"] == "lo"
    assert (seen["uid"], seen["gid"]) == (65534, 65534)
    assert seen["otherRunSeen"] == 0
    assert seen["app"] == ". .. functions"

    # No mount writes to the host's disks: the run folder is a tmpfs of
    # diskMb (nosuid, nodev), /tmp one of tmpfsMb; podman's own /var/tmp and
    # /run tmpfs mounts are not there.
    logs = await api.get(f"/api/runs/{run['runId']}/logs")
    mounts = {}
    for line in logs["stdout"].splitlines():
        fields = line.split(" ")
        dash = fields.index("-")
        mounts[fields[4]] = (fields[5].split(","), fields[dash + 1], fields[dash + 3])
    kernel = {"tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"}
    disk_writable = [m for m, (opts, fs, _) in mounts.items() if "rw" in opts and fs not in kernel]
    assert disk_writable == []
    folder_options, folder_fs, folder_super = mounts["/app/functions"]
    assert folder_fs == "tmpfs"
    assert {"rw", "nosuid", "nodev"} <= set(folder_options)
    assert "size=16384k" in folder_super
    assert "mode=700" in folder_super
    assert mounts["/"][0][0] == "ro"
    assert mounts["/tmp"][1] == "tmpfs"
    assert "size=16384k" in mounts["/tmp"][2]
    assert "/var/tmp" not in mounts
    assert "/run" not in mounts


# What a function finds in a folder its image declares as a VOLUME, and
# whether it can exec from /tmp.
VOLUME_PROBE = r"""
echo small > /data/a; small=$?
busybox dd if=/dev/zero of=/data/big bs=1M count=64 2>/dev/null; big=$?
line=$(busybox grep ' /data ' /proc/self/mountinfo)
busybox cp /bin/busybox /tmp/bb; /tmp/bb true; exec_tmp=$?
echo "{\"small\": $small, \"big\": $big, \"exec\": $exec_tmp, \"mount\": \"$line\"}" > result.json
"""


def volumes(engine: EngineService) -> list[Any]:
    """The engine's volumes (its compatible API, which both answer)."""
    status, body = engine.request("GET", "/v1.41/volumes")
    assert status == 200, body
    return list(json.loads(body).get("Volumes") or [])


async def test_an_image_volume_is_a_capped_tmpfs_and_no_volume_is_made(
    api: Api, engine: EngineService
) -> None:
    """An image's VOLUME never becomes storage on the host's disk: the path
    is a tmpfs capped at tmpfsMb (writes past it fail), and no engine makes
    an anonymous volume, during the run or after it. And /tmp is noexec on
    every engine."""
    image = "localhost/edgeloader-fn-volume:1"
    import_busybox_image(engine, image, ["VOLUME /data"])
    before = volumes(engine)
    await api.deploy("vol", image=image, command=sh(VOLUME_PROBE), limits={"tmpfsMb": 8})
    run = await api.invoke("vol")
    assert run["status"] == "succeeded", (run["error"], run)
    seen = run["result"]
    assert seen["small"] == 0  # writable
    assert seen["big"] != 0  # 64 MiB into an 8 MiB tmpfs: ENOSPC
    assert " - tmpfs " in seen["mount"]
    assert "size=8192k" in seen["mount"]
    assert seen["exec"] == 126  # /tmp is noexec: "Permission denied"
    assert volumes(engine) == before
    assert containers_of(engine, run["runId"]) == []


async def test_a_fork_bomb_is_contained_by_the_pids_limit(api: Api) -> None:
    await api.deploy("forks", command=sh(FORK_BOMB), limits={"pids": 16})
    run = await api.invoke("forks")
    assert run["status"] == "succeeded", (run["error"], run)
    assert 1 <= run["result"]["processes"] <= 16


async def test_a_memory_hog_ends_oom(api: Api, engine: EngineService) -> None:
    await api.deploy(
        "hog",
        command=["busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        limits={"memoryMb": 32},
    )
    run = await api.invoke("hog")
    assert run["status"] == "oom", run
    assert run["exitCode"] == 137
    assert "out of memory" in run["error"]
    assert (await api.get("/api/functions/hog/stats"))["oom"] == 1
    assert containers_of(engine, run["runId"]) == []
    assert run["memoryPeakMb"] >= 31


async def test_an_exit_137_with_memory_to_spare_is_failed_not_oom(api: Api) -> None:
    await api.deploy("fake", command=sh("exit 137"), limits={"memoryMb": 64})
    run = await api.invoke("fake")
    assert (run["status"], run["exitCode"]) == ("failed", 137), run
    assert run["memoryPeakMb"] < 32


async def test_each_run_records_the_cpu_and_memory_it_used(api: Api) -> None:
    # 2 s of busy CPU; 40 MiB held by busybox tail -c.
    burn = "end=$(( $(busybox date +%s) + 2 )); while [ $(busybox date +%s) -lt $end ]; do :; done"
    grow = "busybox dd if=/dev/zero bs=1M count=40 2>/dev/null | busybox tail -c 41943040"
    grow += " > /dev/null"
    await api.deploy("idle", command=sh("true"), limits={"cpus": 1})
    await api.deploy("burn", command=sh(burn), limits={"cpus": 1})
    await api.deploy("grow", command=sh(grow), limits={"memoryMb": 128})
    idle, burnt, grown = [await api.invoke(name) for name in ("idle", "burn", "grow")]
    for run in (idle, burnt, grown):
        assert run["status"] == "succeeded", run
        assert run["invoker"] == "user:admin@example.org"
        assert run["coldStart"] is True
    assert idle["cpuMs"] < 500 < burnt["cpuMs"], (idle["cpuMs"], burnt["cpuMs"])
    assert idle["memoryPeakMb"] < 24 < 40 <= grown["memoryPeakMb"], (idle, grown)
    stats = await api.get("/api/functions/burn/stats")
    assert stats["cpuMsP50"] == stats["cpuMsP95"] == burnt["cpuMs"]
    assert stats["coldStarts"] == 1
    assert (await api.get("/api/functions/grow/stats"))["memoryPeakMbMax"] == grown["memoryPeakMb"]


# -- deadline and failures -----------------------------------------------------------


async def test_a_run_past_its_deadline_is_killed_as_timeout(
    api: Api, engine: EngineService
) -> None:
    await api.deploy("sleeper", command=["sleep", "60"], limits={"timeoutS": 2})
    async with asyncio.timeout(45):  # generous, and still far short of the sleep
        run = await api.invoke("sleeper")
    assert run["status"] == "timeout", run
    assert "time limit of 2 s" in run["error"]
    assert containers_of(engine, run["runId"]) == []


async def test_non_zero_exit_and_invalid_result_are_failed_records(api: Api) -> None:
    chatty = "busybox head -c 3000000 /dev/zero; echo boom >&2; exit 3"
    await api.deploy("crash", command=sh(chatty))
    run = await api.invoke("crash")
    assert run["status"] == "failed"
    assert run["exitCode"] == 3
    assert run["error"] == "exited with code 3: boom"
    assert run["result"] is None
    logs = await api.get(f"/api/runs/{run['runId']}/logs")
    assert logs["truncated"] is True
    assert len(logs["stdout"]) == 1 << 20  # the output cap
    assert logs["stderr"] == "boom\n"

    await api.deploy("garbage", command=sh("echo '{not json' > result.json"))
    run = await api.invoke("garbage")
    assert run["status"] == "failed"
    assert run["exitCode"] == 0
    assert run["error"].startswith("result.json is not valid JSON")

    await api.deploy(
        "link",
        command=sh(
            "ln -s /etc/passwd result.json 2>/dev/null || busybox ln -s /etc/passwd result.json"
        ),
    )
    run = await api.invoke("link")
    assert (run["status"], run["error"]) == ("failed", "result.json is not a readable regular file")


# -- bad input -------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_4xx(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(request_max=4096, build_context_max=64 * 1024)
    status, body, _ = await api.call(
        "POST", "/api/functions", api.admin, json={"name": "ghost", "image": "localhost/no:1"}
    )
    assert (status, body) == (404, {"detail": "image localhost/no:1 is not in the engine"})
    # A name the engine refuses outright is the caller's mistake, not the engine's failure.
    status, body, _ = await api.call(
        "POST", "/api/functions", api.admin, json={"name": "ghost", "image": "localhost/No:1"}
    )
    assert status == 422, body
    assert "image" in body["detail"]

    for limits, field in [
        ({"memoryMb": 8}, "limits.memoryMb"),
        ({"cpus": 1000}, "limits.cpus"),
        ({"timeoutS": 0}, "limits.timeoutS"),
        ({"pids": "64"}, "limits.pids"),
        ({"swap": 1}, "limits.swap"),
    ]:
        status, body, _ = await api.call(
            "POST",
            "/api/functions",
            api.admin,
            json={"name": "x", "image": IMAGE, "limits": limits},
        )
        assert status == 422, (limits, body)
        assert f"'{field}'" in body["detail"]
    extras: list[tuple[JSON, str]] = [
        ({"privileged": True}, "privileged"),
        ({"concurrency": 17}, "concurrency"),
    ]
    for extra, field in extras:
        status, body, _ = await api.call(
            "POST", "/api/functions", api.admin, json={"name": "x", "image": IMAGE, **extra}
        )
        assert status == 422, body
        assert f"'{field}'" in body["detail"]

    for name in ("Bad", "../etc", "a b", "-x", "x" * 64):
        status, body, _ = await api.call(
            "POST", "/api/functions", api.admin, json={"name": name, "image": IMAGE}
        )
        assert status == 400, (name, body)
        assert "unsafe function name" in body["detail"]
    status, body, _ = await api.call("POST", "/api/functions/..%2Fx/invoke", api.admin, json={})
    assert status in (400, 404), body

    status, body, _ = await api.call(
        "POST",
        "/api/functions/nodockerfile/build",
        api.admin,
        data=build_form(context_tar({"app.sh": b"echo hi\n"})),
    )
    assert (status, body) == (422, {"detail": "the build context has no Dockerfile at its root"})

    await api.deploy("small", command=sh("true"))
    status, body, _ = await api.call(
        "POST",
        "/api/functions/small/invoke",
        api.admin,
        data=b"[" + b"1," * 4096 + b"1]",
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    assert "larger than 4096 bytes" in body["detail"]
    # Within the size limit, but deeper than any JSON parser goes: a 422, not a 500.
    status, body, _ = await api.call(
        "POST",
        "/api/functions/small/invoke",
        api.admin,
        data=b"[" * 1500 + b"]" * 1500,
        headers={"Content-Type": "application/json"},
    )
    assert status == 422, body
    assert "nested too deeply" in body["detail"]
    status, body, _ = await api.call(
        "POST",
        "/api/functions/big/build",
        api.admin,
        data=build_form(context_tar({"Dockerfile": b"FROM scratch\n", "blob": b"\0" * (2 << 20)})),
    )
    assert status == 413
    assert "larger than" in body["detail"]


async def test_build_from_a_context(api: Api) -> None:
    dockerfile = f'FROM {BASE_IMAGE}\nCOPY app.sh /app.sh\nCMD ["sh", "/app.sh"]\n'
    context = context_tar(
        {"Dockerfile": dockerfile.encode(), "app.sh": b"echo '\"built\"' > result.json\n"}
    )
    status, created, _ = await api.call(
        "POST",
        "/api/functions/built/build",
        api.admin,
        data=build_form(context, {"limits": {"timeoutS": 10}}),
    )
    assert status == 201, created
    assert created["image"] == "localhost/edgeloader-fn-built:1"
    assert created["limits"]["timeoutS"] == 10
    run = await api.invoke("built")
    assert run["result"] == "built", (run, await api.get(f"/api/runs/{run['runId']}/logs"))

    status, updated, _ = await api.call(
        "POST", "/api/functions/built/build", api.admin, data=build_form(context)
    )
    assert status == 200, updated
    assert (updated["version"], updated["image"]) == (2, "localhost/edgeloader-fn-built:2")

    failing = context_tar(
        {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo step-output; exit 7\n".encode()}
    )
    status, body, _ = await api.call(
        "POST", "/api/functions/broken/build", api.admin, data=build_form(failing)
    )
    assert status == 422, body
    assert body["detail"].startswith("image build failed:")
    assert "step-output" in body["detail"]

    remote = context_tar({"Dockerfile": b"FROM docker.io/library/alpine:3\n"})
    status, body, _ = await api.call(
        "POST", "/api/functions/remote/build", api.admin, data=build_form(remote)
    )
    assert (status, body["detail"]) == (
        422,
        "base image docker.io/library/alpine:3 is not in the engine: builds use local images only",
    )


# -- scheduling ------------------------------------------------------------------------


async def test_concurrency_one_and_queue_four_admit_exactly_five_of_ten(api: Api) -> None:
    # Each run lasts seconds, so all ten requests arrive while the first runs.
    script = "sleep 3; cat request.json > result.json"
    await api.deploy("busy", command=sh(script), concurrency=1, queue=4)

    async def invoke(n: int) -> tuple[int, int, Any, str | None]:
        status, body, resp = await api.call(
            "POST", "/api/functions/busy/invoke?async=true", api.admin, json={"n": n}
        )
        return n, status, body, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(invoke(n) for n in range(10)))
    accepted = {n: body["runId"] for n, status, body, _ in answers if status == 202}
    refused = [(n, body, retry) for n, status, body, retry in answers if status == 429]
    assert (len(accepted), len(refused)) == (5, 5), answers
    for _, body, retry in refused:
        assert body["detail"] == (
            "function busy is at its limit: 1 running or due to, and its queue of 4 is full"
        )
        assert retry is not None
        assert int(retry) >= 1

    for n, run_id in accepted.items():
        run = await api.run_ended(run_id)
        assert run["status"] == "succeeded", (run["error"], run)
        assert run["result"] == {"n": n}
    executions = await api.get("/api/functions/busy/executions?limit=100")
    assert executions["total"] == 5
    assert sorted(r["runId"] for r in executions["executions"]) == sorted(accepted.values())


# -- restart -----------------------------------------------------------------------------


async def test_a_killed_service_marks_its_run_interrupted_and_removes_the_container(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str, tmp_path: Path
) -> None:
    stack = await make_stack()
    state = tmp_path / "loader-state"
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:

        async def start() -> Api:
            child, url = await start_loader_process(
                stack.api_url, state, tmp_path, cleanup, log_level="INFO", **env
            )
            api = Api(stack.http, url)
            api.admin = await api.login(ADMIN)
            loaders.append(child)
            return api

        loaders: list[Any] = []
        api = await start()
        await api.deploy("long", command=["sleep", "300"], limits={"timeoutS": 600})
        status, body, _ = await api.call(
            "POST", "/api/functions/long/invoke?async=true", api.admin, json={}
        )
        assert status == 202, body
        run_id = body["runId"]

        async def running() -> bool:
            run = await api.get(f"/api/runs/{run_id}")
            return run["status"] == "running" and bool(containers_of(engine, run_id))

        await wait_for(running)
        loaders[0].process.send_signal(signal.SIGKILL)
        loaders[0].process.wait(10)
        assert containers_of(engine, run_id), "the engine keeps the container of a dead loader"

        api = await start()
        run = await api.get(f"/api/runs/{run_id}")
        assert (run["status"], run["error"]) == ("failed", "interrupted")

        async def removed() -> bool:
            return not containers_of(engine, run_id)

        await wait_for(removed)


async def test_a_function_whose_image_is_gone_says_so_and_what_to_do(
    api: Api, engine: EngineService
) -> None:
    ref = "localhost/edgeloader-fn-gone:1"
    import_busybox_image(engine, ref)
    await api.deploy("gone", image=ref, command=sh("true"))
    remove_image(engine, ref)  # an engine reset, a prune
    run = await api.invoke("gone")
    assert run["status"] == "failed"
    assert run["error"] == "image of gone v1 is gone from the engine: redeploy or unlock again"


def relative(path: Path, start: Path) -> Path:
    return Path(os.path.relpath(path, start))


async def test_a_service_started_with_relative_paths_runs_functions(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str, tmp_path: Path
) -> None:
    """The engine resolves a bind from its own working directory: the
    settings' paths are made absolute when they are loaded."""
    stack = await make_stack()
    state = relative(tmp_path / "relative-state", REPO_ROOT)
    assert not state.is_absolute()
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:
        _, url = await start_loader_process(stack.api_url, state, tmp_path, cleanup, **env)
        api = Api(stack.http, url)
        api.admin = await api.login(ADMIN)
        await api.deploy("rel", command=sh("echo '\"here\"' > result.json"))
        run = await api.invoke("rel")
    assert (run["status"], run["result"]) == ("succeeded", "here"), run
    assert (tmp_path / "relative-state" / "functions").is_dir()


# -- roles -------------------------------------------------------------------------------


async def test_an_operator_may_invoke_but_not_deploy_and_no_token_is_401(api: Api) -> None:
    await api.deploy("shared", command=sh("echo '\"ok\"' > result.json"))
    assert (await api.invoke("shared", token=api.operator))["result"] == "ok"
    denied: list[tuple[str, str, JSON]] = [
        ("POST", "/api/functions", {"json": {"name": "mine", "image": IMAGE}}),
        ("PUT", "/api/functions/shared", {"json": {"image": IMAGE}}),
        ("DELETE", "/api/functions/shared", {}),
        ("POST", "/api/functions/shared/build", {"data": build_form(b"")}),
    ]
    for method, path, kwargs in denied:
        status, body, _ = await api.call(method, path, api.operator, **kwargs)
        assert status == 403, (method, path, body)
    assert (await api.get("/api/functions", token=api.operator))["functions"]
    for method, path in [
        ("GET", "/api/functions"),
        ("POST", "/api/functions/shared/invoke"),
        ("GET", "/api/runs"),
    ]:
        status, _, resp = await api.call(method, path, None)
        assert status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
