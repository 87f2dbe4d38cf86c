"""What every client command shares: ``--url`` and ``--json``, the session,
and how times and sizes are read and written."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeAlias

from edgeloader.cli.client import DEFAULT_URL, Client
from edgeloader.cli.credentials import normalize_url
from edgeloader.cli.output import Console, UsageError

__all__ = [
    "ENV_URL",
    "AsyncCommand",
    "Subcommands",
    "client_options",
    "console",
    "format_bytes",
    "format_time",
    "parse_since",
    "server_url",
    "with_client",
]

ENV_URL = "EDGELOADER_URL"

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AsyncCommand = Callable[[argparse.Namespace, Client, Console], Awaitable[int]]


def client_options() -> argparse.ArgumentParser:
    """The options of every client command. They may also stand before the
    command (``edgeloader --url U load ...``): here they are ``SUPPRESS``ed so
    that a subcommand never overwrites what the main parser read."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the service (default: ${ENV_URL} or {DEFAULT_URL})",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine output: one JSON document per result on stdout",
    )
    return parent


def server_url(args: argparse.Namespace) -> str:
    url = getattr(args, "url", None) or os.environ.get(ENV_URL, "").strip() or DEFAULT_URL
    return normalize_url(url)


def console(args: argparse.Namespace) -> Console:
    return Console(json_mode=bool(getattr(args, "json", False)))


def with_client(command: AsyncCommand) -> Callable[[argparse.Namespace], int]:
    """A client command as ``run_command`` runs it: one event loop, one session."""

    def run(args: argparse.Namespace) -> int:
        url = server_url(args)
        out = console(args)

        async def main() -> int:
            async with Client(url) as client:
                return await command(args, client, out)

        return asyncio.run(main())

    return run


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from ``1795300000``, ``2026-11-21T10:00:00Z`` or a
    duration back from now (``90s``, ``15m``, ``2h``, ``7d``)."""
    now = time.time() if now is None else now
    text = text.strip()
    if match := _RELATIVE.match(text):
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since: {text!r} is not epoch seconds, an ISO 8601 time or a duration like 2h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(epoch: float | None) -> str:
    """UTC, to the second: ``2026-11-21T10:00:00Z``; ``-`` for none."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
