"""``edgeloader prefetch NAME [--wait]``: pre-stage a model's ciphertext
into the service's cache for offline installs, and follow it to the end."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from edgeloader.cli.client import ApiError, Client
from edgeloader.cli.commands.common import Subcommands, format_bytes, with_client
from edgeloader.cli.commands.follow import StatusView, add_wait_options, wait_for_end
from edgeloader.cli.commands.resources import DEFAULT_FOLDER
from edgeloader.cli.events import Followed
from edgeloader.cli.output import Console
from edgeloader.errors import EdgeloaderError

__all__ = ["add_prefetch_command"]

#: The job's final states; ``waiting`` is not one: the service tries again.
FINAL = frozenset({"done", "failed"})


class PrefetchFailed(EdgeloaderError):
    """The pre-staging failed."""


def add_prefetch_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    prefetch = commands.add_parser(
        "prefetch",
        parents=[parent],
        help="pre-stage a model into the service's cache, for offline installs",
        description=(
            "Start pre-staging resource NAME (POST /api/prefetch): the service downloads "
            "its ciphertext into its model cache in the background, resumes after a "
            "restart, and serves later loads from there while the CDN is out of reach. "
            "Without --wait, print the job's state; with --wait, follow it to the end "
            "(exit 0 when done, 1 when it failed). A job that waits for the link says "
            "why, and keeps trying."
        ),
    )
    prefetch.add_argument("name", metavar="NAME", help="the resource's name")
    prefetch.add_argument(
        "--folder", default=DEFAULT_FOLDER, help=f"its folder (default: {DEFAULT_FOLDER})"
    )
    add_wait_options(prefetch, "pre-staging")
    prefetch.set_defaults(func=with_client(prefetch_command))


def _job(folder: str, name: str) -> Followed:
    def ours(status: dict[str, Any]) -> bool:
        return status.get("folder") == folder and status.get("name") == name

    path = f"/api/prefetch/{quote(folder, safe='')}/{quote(name, safe='')}"
    return Followed("prefetch", path, FINAL, ours)


def _summary(status: dict[str, Any]) -> str:
    where = f"{status['folder']}/{status['name']}"
    line = f"prefetch {where}: {status['state']}"
    total = status.get("bytesTotal")
    if status["state"] == "done" and isinstance(total, int) and total:
        return f"{line} ({format_bytes(total)} in the cache)"
    if status.get("error"):
        return f"{line} ({status['error']})"
    return line


async def prefetch_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    body = {"folder": args.folder, "name": args.name}
    answer = await client.call("POST", "/api/prefetch", json=body, expect=(202,))
    if not isinstance(answer, dict) or not isinstance(answer.get("state"), str):
        raise ApiError(202, "the answer has no state")
    if not args.wait:
        out.result(answer, _summary(answer))
        return 1 if answer["state"] == "failed" else 0
    final = await wait_for_end(
        client,
        _job(args.folder, args.name),
        StatusView(out, "prefetch", FINAL),
        answer,
        args.timeout,
        lambda state: PrefetchFailed(
            f"pre-staging of {args.folder}/{args.name} is still {state} after {args.timeout:g} s"
        ),
    )
    if final["state"] != "done":
        # Said once, as the error line; --json still gets the final status.
        out.result(final, None)
        why = final.get("error") or "unknown error"
        raise PrefetchFailed(f"pre-staging of {args.folder}/{args.name} failed: {why}")
    out.result(final, _summary(final))
    return 0
