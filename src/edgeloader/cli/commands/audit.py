"""``edgeloader audit``: the service's audit log (Admin or ApiAdmin)."""

from __future__ import annotations

import argparse
from typing import Any

from edgeloader.cli.client import Client
from edgeloader.cli.commands.common import Subcommands, format_time, parse_since, with_client
from edgeloader.cli.output import Console

__all__ = ["add_audit_command"]


def add_audit_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    audit = commands.add_parser(
        "audit",
        parents=[parent],
        help="show the audit log (admins)",
        description=(
            "The newest entries of the audit log (GET /api/audit?newest=true), listed "
            "oldest first: logins, token exchanges, keys, loads, uploads, unlocks, functions."
        ),
    )
    audit.add_argument(
        "--since",
        default="0",
        metavar="WHEN",
        help="epoch seconds, an ISO 8601 time (UTC if no zone) or a duration back (15m, 2h, 7d)",
    )
    audit.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help="the newest N entries from --since on (1-1000; default: 100)",
    )
    audit.set_defaults(func=with_client(audit_command))


def _entry_line(entry: dict[str, Any]) -> str:
    parts = [
        format_time(entry.get("at")),
        entry.get("subject") or "-",
        entry.get("role") or "-",
        entry.get("action") or "-",
        entry.get("route") or "-",
        entry.get("resource") or "-",
        entry.get("outcome") or "-",
    ]
    if entry.get("bytes"):
        parts.append(f"{entry['bytes']} bytes")
    if entry.get("detail"):
        parts.append(str(entry["detail"]))
    return "  ".join(str(p) for p in parts)


async def audit_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    params = {
        "since": f"{parse_since(args.since):.3f}",
        "limit": str(args.limit),
        "newest": "true",
    }
    answer = await client.call("GET", "/api/audit", params=params)
    entries = answer.get("entries", [])
    out.result(answer, [_entry_line(e) for e in entries] or ["no audit entries"])
    return 0
