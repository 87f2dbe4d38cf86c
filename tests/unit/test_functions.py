"""The pure parts of functions: field rules, stats, Dockerfile checks, the
scheduler's admission, and reading what a function leaves behind."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloader.errors import PayloadTooLarge, QueueFull, UnsafeName, ValidationFailed
from edgeloader.functions.build import check_dockerfile, read_dockerfile
from edgeloader.functions.folders import BadOutput, RunFolders
from edgeloader.functions.records import Outcome, RunRecord, RunStatus
from edgeloader.functions.scheduler import Scheduler
from edgeloader.functions.spec import Limits, function_name, parse_spec
from edgeloader.functions.store import RunHistory, open_database, percentile_offset
from edgeloader.functions.usage import RunCgroups, Usage
from edgeloader.storage.mounts import mounted_under, tmpfs_size

IMAGE = "localhost/app:1"


def queued(run_id: str, function: str, queued_at: float) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        function=function,
        version=1,
        image=IMAGE,
        status=RunStatus.QUEUED,
        queued_at=queued_at,
    )


# -- fields -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "my-fn.v2_x", "a" * 63])
def test_safe_names(name: str) -> None:
    assert function_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", ".a", "_a", "a/b", "a b", "a" * 64, "é", None, 1])
def test_unsafe_names_are_400(name: Any) -> None:
    with pytest.raises(UnsafeName) as raised:
        function_name(name)
    assert raised.value.status == 400


def test_defaults() -> None:
    spec = parse_spec({"image": IMAGE})
    assert spec.limits == Limits(memory_mb=128, cpus=0.5, pids=64, timeout_s=30, tmpfs_mb=16)
    assert (spec.command, dict(spec.env), spec.concurrency, spec.queue, spec.user) == (
        None,
        {},
        1,
        8,
        65534,
    )


def test_limits_merge_over_the_defaults() -> None:
    spec = parse_spec({"image": IMAGE, "limits": {"pids": 8, "cpus": 2}}, cores=2)
    assert spec.limits == Limits(pids=8, cpus=2.0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limits": {"memoryMb": 15}}, "limits.memoryMb"),
        ({"limits": {"memoryMb": 4097}}, "limits.memoryMb"),
        ({"limits": {"cpus": 0.04}}, "limits.cpus"),
        ({"limits": {"cpus": 2.5}}, "limits.cpus"),
        ({"limits": {"cpus": True}}, "limits.cpus"),
        ({"limits": {"pids": 7}}, "limits.pids"),
        ({"limits": {"pids": 4097}}, "limits.pids"),
        ({"limits": {"timeoutS": 0}}, "limits.timeoutS"),
        ({"limits": {"timeoutS": 3601}}, "limits.timeoutS"),
        ({"limits": {"timeoutS": 1.5}}, "limits.timeoutS"),
        ({"limits": {"tmpfsMb": 0}}, "limits.tmpfsMb"),
        ({"limits": {"tmpfsMb": 1025}}, "limits.tmpfsMb"),
        ({"limits": {"network": "host"}}, "limits.network"),
        ({"limits": []}, "limits"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 17}, "concurrency"),
        ({"queue": -1}, "queue"),
        ({"queue": 257}, "queue"),
        ({"user": 0}, "user"),
        ({"user": 65536}, "user"),
        ({"user": True}, "user"),
        ({"privileged": True}, "privileged"),
        ({"command": "sh -c x"}, "command"),
        ({"command": []}, "command"),
        ({"command": ["a", 1]}, "command"),
        ({"env": {"1A": "x"}}, "env"),
        ({"env": {"A": "x\ny"}}, "env.A"),
        ({"env": {"A": "x\ry"}}, "env.A"),
        ({"env": {"A": "x\0y"}}, "env.A"),
        ({"env": {"A": 1}}, "env.A"),
        ({"env": {"EDGELOADER_RUN_ID": "x"}}, "env"),
        ({"image": "a b"}, "image"),
    ],
)
def test_bad_fields_are_422_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_spec({"image": IMAGE, **body}, cores=2)
    assert raised.value.status == 422
    assert f"'{field}'" in raised.value.detail


def test_a_build_spec_has_no_image() -> None:
    assert parse_spec({"limits": {"pids": 16}}, with_image=False).limits.pids == 16
    with pytest.raises(ValidationFailed, match="'image'"):
        parse_spec({"image": IMAGE}, with_image=False)


# -- stats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "percent", "offset"),
    [(1, 50, 0), (1, 95, 0), (2, 50, 0), (3, 50, 1), (4, 50, 1), (20, 95, 18), (21, 95, 19)],
)
def test_nearest_rank_percentile(count: int, percent: int, offset: int) -> None:
    assert percentile_offset(count, percent) == offset


def test_stats_count_every_status_and_time_the_runs_that_ran(tmp_path: Path) -> None:
    history = RunHistory(open_database(tmp_path))
    durations = [400, 100, 300, 200, 1000]
    statuses = [RunStatus.SUCCEEDED] * 3 + [RunStatus.TIMEOUT, RunStatus.OOM]
    for n, (ms, status) in enumerate(zip(durations, statuses, strict=True)):
        run_id = f"{n:032x}"
        history.add(queued(run_id, "f", queued_at=100.0 + n))
        history.started(run_id, 1000.0)
        used = Outcome(status, cpu_ms=ms // 10, memory_peak_mb=ms / 100)
        history.finish(run_id, used, 1000.0 + ms / 1000)
    history.add(queued("f" * 32, "f", queued_at=200.0))
    history.add(queued("e" * 32, "g", queued_at=300.0))
    stats = history.stats("f")
    assert stats.wire() == {
        "runs": 6,
        "succeeded": 3,
        "failed": 0,
        "timeouts": 1,
        "oom": 1,
        "p50Ms": 300,
        "p95Ms": 1000,
        "lastRunAt": 200.0,
        "cpuMsP50": 30,
        "cpuMsP95": 100,
        "memoryPeakMbMax": 10.0,
        "coldStarts": 5,
    }
    assert sorted(history.interrupt_unfinished(500.0)) == ["e" * 32, "f" * 32]
    assert history.stats("f").failed == 1
    empty = history.stats("nothing")
    assert (empty.runs, empty.p50_ms, empty.last_run_at) == (0, None, None)


# -- build contexts -----------------------------------------------------------------------


def test_base_images_skip_stages_and_scratch() -> None:
    dockerfile = """
# escape=\\
FROM --platform=linux/amd64 localhost/base:1 AS build
RUN make \\
    all
FROM scratch
COPY --from=build /out /out
COPY --from=0 /x /x
COPY --from=localhost/tools:2 /bin/tool /bin/tool
from localhost/base:1
"""
    assert check_dockerfile(dockerfile) == ["localhost/base:1", "localhost/tools:2"]


def test_local_files_and_tmpfs_mounts_are_what_a_build_may_use() -> None:
    dockerfile = """FROM localhost/base:1
ARG VERSION=1
ADD app.tar.gz /app/
ADD ["a b", "/x"]
RUN --mount=type=tmpfs,target=/scratch make
ADD --from=localhost/tools:2 /bin/tool /bin/tool
"""
    assert check_dockerfile(dockerfile) == ["localhost/base:1", "localhost/tools:2"]


@pytest.mark.parametrize(
    ("dockerfile", "detail"),
    [
        ("ARG BASE=x\nFROM ${BASE}\n", "line 1: ARG before FROM"),
        ("FROM --platform=$P a\n", "line 1: FROM uses a build argument"),
        ("FROM a\nADD http://127.0.0.1:8080/x /x\n", "line 2: ADD from a URL"),
        ('FROM a\n\nADD ["https://host/x", "/x"]\n', "line 3: ADD from a URL"),
        ("FROM a\nADD git@host:repo.git /src\n", "line 2: ADD from a URL"),
        ("FROM a\nRUN \\\n  --mount=type=cache,target=/c make\n", "line 2: RUN --mount"),
        ("FROM a\nRUN --mount=type=bind,from=b,target=/b x\n", "line 2: RUN --mount"),
        ("FROM a\nRUN --mount=target=/b x\n", "line 2: RUN --mount"),  # bind by default
        ("FROM a\nRUN --mount=type=secret,id=s x\n", "line 2: RUN --mount"),
        ("FROM a\nCOPY --from=$IMG /x /x\n", "line 2: --from uses a build argument"),
        ("# syntax=docker/dockerfile:1\nFROM a\n", "line 1: a syntax directive"),
        ("# escape=`\n# syntax=x/y\nFROM a\n", "line 2: a syntax directive"),
    ],
)
def test_what_reaches_outside_is_refused_naming_the_line(dockerfile: str, detail: str) -> None:
    with pytest.raises(ValidationFailed, match=detail):
        check_dockerfile(dockerfile)


def tar_with(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_dockerfile_is_found_at_the_root_of_plain_and_compressed_tars(tmp_path: Path) -> None:
    path = tmp_path / "context"
    for data in (
        tar_with({"Dockerfile": b"FROM a\n"}),
        tar_with({"./Dockerfile": b"FROM a\n"}),
        tar_with({"x": b"", "Dockerfile": b"FROM a\n"}, "w:gz"),
    ):
        path.write_bytes(data)
        assert read_dockerfile(path, 1 << 20) == "FROM a\n"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (tar_with({"sub/Dockerfile": b"FROM a\n"}), "has no Dockerfile at its root"),
        (b"not a tar at all", "must be a tar archive"),
        (gzip.compress(b"x" * 1000), "must be a tar archive"),
        (tar_with({"Dockerfile": b"FROM a\n", "Containerfile": b"FROM b\n"}), "holds Contain"),
        (tar_with({"dockerfile": b"FROM b\n", "Dockerfile": b"FROM a\n"}), "holds dockerfile"),
        (tar_with({"Dockerfile": b"FROM a\n", "./Dockerfile": b"FROM b\n"}), "two Dockerfile"),
    ],
)
def test_a_context_without_one_plain_dockerfile_is_422(
    tmp_path: Path, data: bytes, detail: str
) -> None:
    path = tmp_path / "context"
    path.write_bytes(data)
    with pytest.raises(ValidationFailed, match=detail):
        read_dockerfile(path, 1 << 20)


def test_the_context_cap_counts_unpacked_bytes(tmp_path: Path) -> None:
    path = tmp_path / "context"
    path.write_bytes(tar_with({"Dockerfile": b"FROM a\n", "zeros": bytes(8 << 20)}, "w:gz"))
    assert path.stat().st_size < 64 << 10  # small on the wire, 8 MiB unpacked
    with pytest.raises(PayloadTooLarge, match="unpacked"):
        read_dockerfile(path, 1 << 20)
    assert read_dockerfile(path, 16 << 20) == "FROM a\n"


# -- scheduler ---------------------------------------------------------------------------


async def test_admission_stops_at_concurrency_plus_queue() -> None:
    scheduler = Scheduler(max_runs=2)
    tickets = [scheduler.admit("f", concurrency=1, queue=2) for _ in range(3)]
    with pytest.raises(QueueFull) as refused:
        scheduler.admit("f", concurrency=1, queue=2)
    assert refused.value.status == 429
    assert refused.value.retry_after >= 1
    scheduler.admit("g", concurrency=1, queue=0).close()  # another function's own queue
    tickets.pop().close()
    scheduler.admit("f", concurrency=1, queue=2)


async def test_runs_start_in_order_within_both_limits() -> None:
    scheduler = Scheduler(max_runs=2)
    running: set[str] = set()
    peak = {"f": 0, "all": 0}
    order: list[str] = []

    async def run(name: str, n: int) -> None:
        ticket = scheduler.admit(name, concurrency=1, queue=8)
        try:
            async with ticket.slot():
                key = f"{name}{n}"
                order.append(key)
                running.add(key)
                peak["f"] = max(peak["f"], sum(k.startswith("f") for k in running))
                peak["all"] = max(peak["all"], len(running))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                running.discard(key)
        finally:
            ticket.close()

    await asyncio.gather(*(run("f", n) for n in range(4)), *(run(g, 0) for g in "ghi"))
    assert peak == {"f": 1, "all": 2}
    assert [k for k in order if k.startswith("f")] == ["f0", "f1", "f2", "f3"]
    assert scheduler.waiting("f") == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    scheduler = Scheduler(max_runs=1)
    first = scheduler.admit("f", concurrency=1, queue=1)
    second = scheduler.admit("f", concurrency=1, queue=1)
    async with first.slot():
        waiter = asyncio.create_task(second.slot().__aenter__())
        await asyncio.sleep(0)
        assert scheduler.waiting("f") == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        second.close()
    first.close()
    async with scheduler.admit("f", concurrency=1, queue=0).slot():
        pass


# -- what a function leaves behind ----------------------------------------------------------


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[RunFolders]:
    folders = RunFolders(tmp_path)
    folders.open()
    yield folders
    folders.remove(RUN)


RUN = "0" * 32
DISK = 1 << 20


def test_prepare_mounts_a_capped_tmpfs_given_to_the_uid(folders: RunFolders) -> None:
    uid = os.getuid()
    work = folders.prepare(RUN, b'{"a": 1}', {"K": "v", "EDGELOADER_RUN_ID": RUN}, uid, DISK)
    assert (work / "request.json").read_bytes() == b'{"a": 1}'
    assert (work / ".env.config").read_text() == f"K=v\nEDGELOADER_RUN_ID={RUN}\n"
    assert (work.stat().st_uid, work.stat().st_mode & 0o777) == (uid, 0o700)
    assert tmpfs_size(work) == DISK
    with pytest.raises(OSError, match="No space left"):
        (work / "big").write_bytes(b"x" * (2 * DISK))
    folders.remove(RUN)
    assert tmpfs_size(work) is None  # unmounted, and gone
    assert not folders.exists(RUN)


def test_open_clears_what_a_dead_process_left(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path)
    folders.open()
    folders.prepare(RUN, b"{}", {}, os.getuid(), DISK)
    RunFolders(tmp_path).open()  # the next process
    assert not folders.exists(RUN)
    assert mounted_under(folders.root) == []


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda p: p.symlink_to("/etc/passwd"), "not a readable regular file"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.write_bytes(b"1" * 2000), "larger than 1024 bytes"),
        (lambda p: p.write_bytes(b"{"), "not valid JSON"),
    ],
)
def test_an_unusable_result_is_refused_without_following_or_blocking(
    folders: RunFolders, make: Any, detail: str
) -> None:
    work = folders.prepare(RUN, b"{}", {}, os.getuid(), DISK)
    make(work / "result.json")
    with pytest.raises(BadOutput, match=detail):
        folders.read_result(RUN, 1024)


def test_a_result_nested_too_deeply_is_refused_not_a_crash(folders: RunFolders) -> None:
    work = folders.prepare(RUN, b"{}", {}, os.getuid(), DISK)
    (work / "result.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(BadOutput, match="nested too deeply"):
        folders.read_result(RUN, 1 << 20)


def test_logs_nested_too_deeply_are_null_not_a_crash(folders: RunFolders) -> None:
    work = folders.prepare(RUN, b"{}", {}, os.getuid(), DISK)
    (work / "logs.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    assert folders.read_logs(RUN, 1 << 20) is None


def test_no_result_is_none(folders: RunFolders) -> None:
    folders.prepare(RUN, b"{}", {}, os.getuid(), DISK)
    assert folders.read_result(RUN, 1024) is None


def test_records_are_pruned_by_age_count_and_bytes(tmp_path: Path) -> None:
    history = RunHistory(open_database(tmp_path))
    left = Outcome(RunStatus.SUCCEEDED, stdout=b"x" * 1000, logs={"a": 1}, started=True)
    for n, ended in enumerate((100.0, 200.0, 300.0, 400.0, None)):
        run_id = f"{n:032x}"
        history.add(queued(run_id, "f", queued_at=50.0 + n))
        if ended is not None:
            history.finish(run_id, left, ended)
    assert history.output(f"{1:032x}") == (b"x" * 1000, b"", {"a": 1})
    # Older than 150: run 0 goes; the running one (4) never does.
    assert history.prune(150.0, max_records=100, max_bytes=1 << 30) == 1
    assert history.get(f"{0:032x}") is None
    assert history.output(f"{0:032x}") is None  # its output goes with it
    # At most 3 records: the oldest ended one (1) goes.
    assert history.prune(0.0, max_records=3, max_bytes=1 << 30) == 1
    assert [r.run_id for r in history.find()] == [f"{n:032x}" for n in (4, 3, 2)]
    # At most 1500 bytes kept (each ended run keeps about 1010): one more goes.
    assert history.prune(0.0, max_records=100, max_bytes=1500) == 1
    assert [r.run_id for r in history.find()] == [f"{n:032x}" for n in (4, 3)]


# -- what a run used ----------------------------------------------------------------------


def test_usage_is_read_from_the_runs_parent_cgroup_v1_and_v2(tmp_path: Path) -> None:
    run = "a" * 32
    v1 = tmp_path / "v1"
    (v1 / "cpuacct" / "edgeloader-runs" / run).mkdir(parents=True)
    (v1 / "memory" / "edgeloader-runs" / run).mkdir(parents=True)
    (v1 / "cpuacct" / "edgeloader-runs" / run / "cpuacct.usage").write_text("1234567890\n")
    (v1 / "memory" / "edgeloader-runs" / run / "memory.max_usage_in_bytes").write_text("52428800")
    cgroups = RunCgroups("cgroupfs", v1)
    assert cgroups.parent(run) == f"/edgeloader-runs/{run}"
    used = cgroups.usage(run)
    assert (used.cpu_ms, used.memory_peak_mb) == (1235, 50.0)
    assert cgroups.leftovers() == [run]
    # A real cgroup goes with rmdir, its files and all; these need emptying.
    (v1 / "cpuacct" / "edgeloader-runs" / run / "cpuacct.usage").unlink()
    (v1 / "memory" / "edgeloader-runs" / run / "memory.max_usage_in_bytes").unlink()
    cgroups.remove(run)
    assert cgroups.leftovers() == []

    v2 = tmp_path / "v2"
    (v2 / "edgeloader-runs" / run).mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "edgeloader-runs" / run / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    used = RunCgroups("cgroupfs", v2).usage(run)
    assert (used.cpu_ms, used.memory_peak_mb) == (2, None)  # no memory.peak before 5.19

    systemd = RunCgroups("systemd", v1)
    assert systemd.parent(run) is None
    assert systemd.usage(run) == Usage(None, None)
