"""``edgeloader fn deploy|invoke|runs|logs|describe|list|delete``:
functions on the box (docs/functions.md)."""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp

from edgeloader.cli.client import ApiError, Client
from edgeloader.cli.commands.common import (
    Subcommands,
    format_time,
    parse_since,
    with_client,
)
from edgeloader.cli.commands.deploy_file import deployment, limit_help, option_help, warm_help
from edgeloader.cli.output import Console, UsageError, table
from edgeloader.cli.run_follow import Printed, follow_run, run_path
from edgeloader.errors import EdgeloaderError

__all__ = ["add_function_commands"]

JSON = dict[str, Any]
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "timeout", "oom")


class RunFailed(EdgeloaderError):
    """The run did not succeed."""


def add_function_commands(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    fn = commands.add_parser(
        "fn",
        help="deploy, invoke and inspect functions",
        description="Functions: container images run in isolation on request (docs/functions.md).",
    )
    sub = fn.add_subparsers(dest="fn_command", metavar="COMMAND", required=True)

    deploy = sub.add_parser(
        "deploy",
        parents=[parent],
        help="deploy a function, or a new version of it (admins)",
        description=(
            "Deploy NAME from an image already in the engine (--image), or build it on the "
            "box from a build context (--context: a folder or a tar with a Dockerfile). "
            "An existing function gets a new version. A deploy file (-f, YAML or JSON) may "
            "give every field, NAME and the image or context too; flags win over it. "
            "The run folder and /tmp live in the run's memory: --disk-mb plus --tmpfs-mb "
            "may not exceed --memory-mb."
        ),
    )
    deploy.add_argument("name", metavar="NAME", nargs="?", help="(default: the file's name)")
    source = deploy.add_mutually_exclusive_group()
    source.add_argument("--image", help="an image reference in the engine")
    source.add_argument("--context", type=Path, help="a build context: a folder or a tar file")
    deploy.add_argument(
        "-f",
        "--file",
        "--spec",
        dest="file",
        type=Path,
        metavar="FILE",
        help="a deploy file: the fields of docs/functions.md in YAML, or JSON (.json)",
    )
    deploy.add_argument("--command", help="the command, split like a shell would (shlex)")
    deploy.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="an env variable (repeat)"
    )
    deploy.add_argument("--memory-mb", type=int, help=limit_help("memory_mb", "memory, MiB"))
    deploy.add_argument("--cpus", type=float, help=limit_help("cpus", "CPU cores"))
    deploy.add_argument("--pids", type=int, help=limit_help("pids", "processes"))
    deploy.add_argument(
        "--timeout", type=int, metavar="SECONDS", help=limit_help("timeout_s", "the run's deadline")
    )
    deploy.add_argument(
        "--tmpfs-mb", type=int, help=limit_help("tmpfs_mb", "the size of the run's /tmp, MiB")
    )
    deploy.add_argument(
        "--disk-mb", type=int, help=limit_help("disk_mb", "the run folder's size, MiB")
    )
    deploy.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FOLDER/NAME",
        help="a model each run finds at /models/FOLDER/NAME (repeat)",
    )
    deploy.add_argument(
        "--warm",
        metavar="MAX[:IDLE_S]",
        help="keep up to MAX containers warm, each IDLE_S seconds after its last invoke "
        f"(MAX {warm_help('max')}; IDLE_S {warm_help('idle_s')})",
    )
    deploy.add_argument("--concurrency", type=int, help=option_help("concurrency", "runs at once"))
    deploy.add_argument("--queue", type=int, help=option_help("queue", "runs that may wait"))
    deploy.add_argument(
        "--user", type=int, help=option_help("user", "the uid the function runs as")
    )
    deploy.set_defaults(func=with_client(deploy_command))

    invoke = sub.add_parser(
        "invoke",
        parents=[parent],
        help="run a function and print its run record",
        description=(
            "Invoke NAME with a JSON body (it becomes request.json). Without --async, wait "
            "for the run's end and print its result; exit 1 unless it succeeded."
        ),
    )
    invoke.add_argument("name", metavar="NAME")
    invoke.add_argument(
        "--data",
        default="{}",
        metavar="JSON",
        help="the body: JSON text, @FILE, or - for stdin (default: {})",
    )
    invoke.add_argument(
        "--async", dest="asynchronous", action="store_true", help="return the run id at once"
    )
    invoke.add_argument(
        "--wait",
        action="store_true",
        help="with --async: follow the run to its end, then print it as a sync invoke does",
    )
    invoke.set_defaults(func=with_client(invoke_command))

    runs = sub.add_parser("runs", parents=[parent], help="the run history, newest first")
    runs.add_argument("name", metavar="NAME", nargs="?", help="only this function's runs")
    runs.add_argument("--status", choices=RUN_STATUSES)
    runs.add_argument("--since", metavar="WHEN", help="epoch seconds, ISO 8601 or 15m/2h/7d")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="(1-1000; 20)")
    runs.set_defaults(func=with_client(runs_command))

    logs = sub.add_parser(
        "logs",
        parents=[parent],
        help="a run's output",
        description=(
            "Print a run's captured stdout to stdout and stderr to stderr. With --follow, "
            "print them as the run writes them, until it ends."
        ),
    )
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="follow a run that has not ended yet"
    )
    logs.set_defaults(func=with_client(logs_command))

    describe = sub.add_parser(
        "describe",
        parents=[parent],
        help="a function's record, settings and stats",
        description="Show NAME: its image, limits, models and warm settings, and its run stats.",
    )
    describe.add_argument("name", metavar="NAME")
    describe.set_defaults(func=with_client(describe_command))

    listing = sub.add_parser("list", parents=[parent], help="the deployed functions")
    listing.set_defaults(func=with_client(list_command))

    delete = sub.add_parser(
        "delete",
        parents=[parent],
        help="delete a function (admins)",
        description=(
            "Delete NAME. Runs already admitted finish, and the records of its runs stay."
        ),
    )
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=with_client(delete_command))


# -- deploy -----------------------------------------------------------------


@contextmanager
def _context_tar(path: Path) -> Iterator[IO[bytes]]:
    """The build context as a tar file to stream: a tar as it is, a folder
    packed into an anonymous temporary file (never held in memory)."""
    if path.is_file():
        with path.open("rb") as handle:
            yield handle
        return
    if not path.is_dir():
        raise UsageError(f"{path}: no such file or folder")
    if not (path / "Dockerfile").is_file():
        raise UsageError(f"{path}: no Dockerfile in the build context")
    with tempfile.TemporaryFile() as packed:
        with tarfile.open(fileobj=packed, mode="w") as tar:
            for item in sorted(path.iterdir()):
                tar.add(item, arcname=item.name)
        packed.seek(0)
        yield packed


def _record_line(record: JSON) -> str:
    return (
        f"deployed {record['name']} version {record['version']} "
        f"(image {record['image']}, {str(record.get('imageId') or '')[:19]})"
    )


async def deploy_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    wanted = deployment(args)
    name, spec = wanted.name, dict(wanted.spec)
    path = f"/api/functions/{quote(name, safe='')}"
    if wanted.context is not None:
        with _context_tar(wanted.context) as context:

            def form() -> aiohttp.FormData:
                context.seek(0)
                data = aiohttp.FormData()
                data.add_field("spec", json.dumps(spec), content_type="application/json")
                data.add_field(
                    "context", context, filename="context.tar", content_type="application/x-tar"
                )
                return data

            out.note(f"building {name} on the box…")
            record = await client.call("POST", f"{path}/build", body=form, expect=(200, 201))
    else:
        spec["image"] = wanted.image
        async with client.request(
            "POST", "/api/functions", json={"name": name, **spec}, expect=(201, 409)
        ) as resp:
            created = resp.status == 201
            record = await resp.json() if created else None
        if not created:  # it exists: a new version
            record = await client.call("PUT", path, json=spec)
    if not isinstance(record, dict):
        raise ApiError(200, "the answer is not a function record")
    out.result(record, _record_line(record))
    return 0


# -- invoke -----------------------------------------------------------------


def _body(data: str) -> Any:
    if data == "-":
        text = sys.stdin.read()
        where = "stdin"
    elif data.startswith("@"):
        try:
            text = Path(data[1:]).read_text()
        except FileNotFoundError:
            raise UsageError(f"{data[1:]}: no such file") from None
        where = data[1:]
    else:
        text, where = data, "--data"
    try:
        return json.loads(text or "{}")
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON: {exc}") from None


def _run_line(run: JSON) -> str:
    took = f" in {run['durationMs']} ms" if run.get("durationMs") is not None else ""
    code = f", exit code {run['exitCode']}" if run.get("exitCode") not in (None, 0) else ""
    return f"run {run['runId']} of {run['function']} v{run['version']}: {run['status']}{took}{code}"


async def invoke_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    if args.wait and not args.asynchronous:
        raise UsageError("--wait goes with --async (a sync invoke waits anyway)")
    body = _body(args.data)
    path = f"/api/functions/{quote(args.name, safe='')}/invoke"
    if args.asynchronous:

        async def start() -> str:
            answer = await client.call(
                "POST", path, json=body, params={"async": "true"}, expect=(202,)
            )
            return str(answer["runId"])

        if not args.wait:
            run_id = await start()
            out.result({"runId": run_id}, run_id)
            return 0
        run, _ = await follow_run(client, start)
    else:
        run = await client.call("POST", path, json=body)
    lines = [_run_line(run)]
    if run.get("result") is not None:
        lines.append(json.dumps(run["result"], ensure_ascii=False))
    out.result(run, lines)
    if run.get("status") != "succeeded":
        raise RunFailed(
            f"run {run.get('runId')} {run.get('status')}: {run.get('error') or 'no detail'}"
        )
    return 0


# -- history ----------------------------------------------------------------


RUN_COLUMNS = (
    "RUN ID",
    "FUNCTION",
    "VERSION",
    "STATUS",
    "TIME",
    "CPU",
    "MEMORY",
    "START",
    "QUEUED",
)


def _history_row(run: JSON) -> list[str]:
    took = f"{run['durationMs']} ms" if run.get("durationMs") is not None else "-"
    return [
        run["runId"],
        run["function"],
        f"v{run['version']}",
        run["status"],
        took,
        *_used(run),
        format_time(run.get("queuedAt")),
    ]


def _used(run: JSON) -> list[str]:
    """CPU, peak memory and how it started: ``38 ms``, ``4.4 MiB``, ``cold``."""
    cpu = f"{run['cpuMs']} ms" if run.get("cpuMs") is not None else "-"
    memory = f"{run['memoryPeakMb']} MiB" if run.get("memoryPeakMb") is not None else "-"
    start = "cold" if run.get("coldStart", True) else "warm"
    return [cpu, memory, start]


async def runs_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    params = {"limit": str(args.limit)}
    if args.name:
        params["function"] = args.name
    if args.status:
        params["status"] = args.status
    if args.since:
        params["since"] = f"{parse_since(args.since):.3f}"
    answer = await client.call("GET", "/api/runs", params=params)
    runs = answer.get("runs", [])
    out.result(answer, table(RUN_COLUMNS, [_history_row(r) for r in runs]))
    return 0


async def logs_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    if args.follow:
        return await _follow_logs(args.run_id, client, out)
    answer = await client.call("GET", f"{run_path(args.run_id)}/logs")
    if out.json_mode:
        out.result(answer)
        return 0
    _write(answer.get("stdout") or "", answer.get("stderr") or "")
    if answer.get("truncated"):
        out.note("(the output was cut at the service's limit)")
    return 0


def _write(stdout: str, stderr: str) -> None:
    if stdout:
        sys.stdout.write(stdout)
        sys.stdout.flush()
    if stderr:
        sys.stderr.write(stderr)
        sys.stderr.flush()


async def _follow_logs(run_id: str, client: Client, out: Console) -> int:
    """Prints the run's output as it comes, then what the stream did not
    carry (a run that had already ended: all of it)."""

    async def start() -> str:
        return run_id

    # --json: one document, the logs, once the run has ended.
    _, printed = await follow_run(client, start, None if out.json_mode else _write)
    try:
        answer = await client.call("GET", f"{run_path(run_id)}/logs")
    except ApiError as exc:
        if exc.status != 404 or out.json_mode:  # 404: it never started, printed nothing
            raise
        answer = {}
    if out.json_mode:
        out.result(answer)
        return 0
    stdout, stderr, placed = _rest(answer, printed)
    _write(stdout, stderr)
    if not placed:
        out.note(f"(not all of the output was seen live: `fn logs {run_id}` has it all)")
    if answer.get("truncated"):
        out.note("(the output was cut at the service's limit)")
    return 0


def _rest(answer: JSON, printed: Printed) -> tuple[str, str, bool]:
    """What the run's kept output holds beyond what was printed live, and
    whether that completes it. When the live output is not the start of
    the kept one (the follow began after the run did, or events were
    dropped), the rest cannot be placed after it."""
    rest = []
    placed = True
    for key, seen in (("stdout", printed.stdout), ("stderr", printed.stderr)):
        kept, shown = str(answer.get(key) or ""), "".join(seen)
        if kept.startswith(shown):
            rest.append(kept[len(shown) :])
        else:
            rest.append("")
            placed = False
    return rest[0], rest[1], placed


async def describe_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    name = quote(args.name, safe="")
    record = await client.call("GET", f"/api/functions/{name}")
    stats = await client.call("GET", f"/api/functions/{name}/stats")
    if out.json_mode:
        out.result({"function": record, "stats": stats})
        return 0
    limits = record.get("limits") or {}
    warm = record.get("warm")
    lines = [
        f"{record['name']}  v{record['version']}  {record['image']}",
        f"  image id     {record.get('imageId') or '-'}",
        "  command      " + (" ".join(record.get("command") or []) or "(the image's own)"),
        f"  env          {', '.join(record.get('envKeys') or []) or '-'}",
        "  limits       " + ", ".join(f"{k} {v}" for k, v in limits.items()),
        f"  runs         concurrency {record['concurrency']}, queue {record['queue']}, "
        f"uid {record['user']}",
        "  models       "
        + (", ".join(f"{m['folder']}/{m['name']}" for m in record.get("models") or []) or "-"),
        "  warm         "
        + (f"up to {warm['max']}, idle {warm['idleS']} s" if warm else "no (a container per run)"),
        f"  created      {format_time(record.get('createdAt'))}",
        f"  updated      {format_time(record.get('updatedAt'))}",
        f"  stats        {stats['runs']} runs: {stats['succeeded']} succeeded, "
        f"{stats['failed']} failed, {stats['timeouts']} timeouts, {stats['oom']} oom; "
        f"{stats['coldStarts']} cold starts",
        f"  time         p50 {_ms(stats.get('p50Ms'))}, p95 {_ms(stats.get('p95Ms'))}",
        f"  cpu          p50 {_ms(stats.get('cpuMsP50'))}, p95 {_ms(stats.get('cpuMsP95'))}",
        "  memory peak  "
        + (f"{stats['memoryPeakMbMax']} MiB" if stats.get("memoryPeakMbMax") is not None else "-"),
    ]
    out.result(record, lines)
    return 0


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value} ms"


async def list_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("GET", "/api/functions")
    rows = [
        [f["name"], f"v{f['version']}", f["image"], format_time(f.get("updatedAt"))]
        for f in answer.get("functions", [])
    ]
    out.result(answer, table(("NAME", "VERSION", "IMAGE", "UPDATED"), rows))
    return 0


async def delete_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("DELETE", f"/api/functions/{quote(args.name, safe='')}")
    out.result(answer, f"deleted {args.name} (the records of its runs stay)")
    return 0
