"""``edgeloader fn deploy|invoke|runs|logs|list``: functions on the box
(docs/functions.md)."""

from __future__ import annotations

import argparse
import json
import shlex
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
from edgeloader.cli.output import Console, UsageError
from edgeloader.errors import EdgeloaderError

__all__ = ["add_function_commands"]

JSON = dict[str, Any]
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "timeout", "oom")
#: Flag → field of ``limits``.
LIMIT_FLAGS = {
    "memory_mb": "memoryMb",
    "cpus": "cpus",
    "pids": "pids",
    "timeout": "timeoutS",
    "tmpfs_mb": "tmpfsMb",
    "disk_mb": "diskMb",
}


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
            "An existing function gets a new version. Flags win over --spec."
        ),
    )
    deploy.add_argument("name", metavar="NAME")
    source = deploy.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image reference in the engine")
    source.add_argument("--context", type=Path, help="a build context: a folder or a tar file")
    deploy.add_argument("--spec", type=Path, help="a JSON file with the other fields")
    deploy.add_argument("--command", help="the command, split like a shell would (shlex)")
    deploy.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="an env variable (repeat)"
    )
    deploy.add_argument("--memory-mb", type=int)
    deploy.add_argument("--cpus", type=float)
    deploy.add_argument("--pids", type=int)
    deploy.add_argument("--timeout", type=int, metavar="SECONDS", help="the run's deadline")
    deploy.add_argument("--tmpfs-mb", type=int, help="the size of the run's /tmp")
    deploy.add_argument("--disk-mb", type=int, help="the run folder's size")
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
        help="keep up to MAX containers warm, each IDLE_S seconds after its last invoke",
    )
    deploy.add_argument("--concurrency", type=int, help="runs at once (1-16)")
    deploy.add_argument("--queue", type=int, help="runs that may wait (0-256)")
    deploy.add_argument("--user", type=int, help="the uid the function runs as")
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
        description="Print a run's captured stdout to stdout and stderr to stderr.",
    )
    logs.add_argument("run_id", metavar="RUN_ID")
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


# -- deploy -----------------------------------------------------------------


def _spec(args: argparse.Namespace) -> JSON:
    spec: JSON = {}
    if args.spec is not None:
        try:
            loaded = json.loads(args.spec.read_text())
        except FileNotFoundError:
            raise UsageError(f"{args.spec}: no such file") from None
        except ValueError as exc:
            raise UsageError(f"{args.spec}: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{args.spec}: must hold a JSON object")
        spec.update(loaded)
        spec.pop("name", None)  # NAME is the argument
    if args.command is not None:
        try:
            spec["command"] = shlex.split(args.command)
        except ValueError as exc:
            raise UsageError(f"--command: {exc}") from None
    if args.env:
        env = dict(spec.get("env") or {})
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--env: expected KEY=VALUE, got {item!r}")
            env[key] = value
        spec["env"] = env
    limits = dict(spec.get("limits") or {})
    for flag, name in LIMIT_FLAGS.items():
        if getattr(args, flag) is not None:
            limits[name] = getattr(args, flag)
    if limits:
        spec["limits"] = limits
    for name in ("concurrency", "queue", "user"):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    if args.model:
        spec["models"] = [_model(item) for item in args.model]
    if args.warm is not None:
        spec["warm"] = _warm(args.warm)
    return spec


def _model(item: str) -> JSON:
    folder, sep, name = item.partition("/")
    if not sep or not folder or not name:
        raise UsageError(f"--model: expected FOLDER/NAME, got {item!r}")
    return {"folder": folder, "name": name}


def _warm(text: str) -> JSON:
    most, _, idle = text.partition(":")
    try:
        warm: JSON = {"max": int(most)}
        if idle:
            warm["idleS"] = int(idle)
    except ValueError:
        raise UsageError(f"--warm: expected MAX or MAX:IDLE_S, got {text!r}") from None
    return warm


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
    name = args.name
    spec = _spec(args)
    path = f"/api/functions/{quote(name, safe='')}"
    if args.context is not None:
        spec.pop("image", None)
        with _context_tar(args.context) as context:

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
        spec["image"] = args.image
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
    body = _body(args.data)
    path = f"/api/functions/{quote(args.name, safe='')}/invoke"
    if args.asynchronous:
        answer = await client.call("POST", path, json=body, params={"async": "true"}, expect=(202,))
        out.result(answer, str(answer["runId"]))
        return 0
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


def _history_line(run: JSON) -> str:
    took = f"{run['durationMs']} ms" if run.get("durationMs") is not None else "-"
    return (
        f"{run['runId']}  {run['function']}  v{run['version']}  {run['status']}  "
        f"{took}  {_used(run)}  queued {format_time(run.get('queuedAt'))}"
    )


def _used(run: JSON) -> str:
    """CPU, peak memory and how it started: ``cpu 38 ms  mem 4.4 MiB  cold``."""
    cpu = f"{run['cpuMs']} ms" if run.get("cpuMs") is not None else "-"
    memory = f"{run['memoryPeakMb']} MiB" if run.get("memoryPeakMb") is not None else "-"
    start = "cold" if run.get("coldStart", True) else "warm"
    return f"cpu {cpu}  mem {memory}  {start}"


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
    out.result(answer, [_history_line(r) for r in runs] or ["no runs"])
    return 0


async def logs_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("GET", f"/api/runs/{quote(args.run_id, safe='')}/logs")
    if out.json_mode:
        out.result(answer)
        return 0
    sys.stdout.write(answer.get("stdout") or "")
    sys.stdout.flush()
    sys.stderr.write(answer.get("stderr") or "")
    if answer.get("truncated"):
        out.note("(the output was cut at the service's limit)")
    return 0


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
    functions = answer.get("functions", [])
    lines = [
        f"{f['name']}  v{f['version']}  {f['image']}  updated {format_time(f.get('updatedAt'))}"
        for f in functions
    ]
    out.result(answer, lines or ["no functions"])
    return 0
