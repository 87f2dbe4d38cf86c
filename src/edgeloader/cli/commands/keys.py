"""``edgeloader keys create|list|revoke``: API keys for on-device agents
(Admin or ApiAdmin)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from edgeloader.cli.client import Client
from edgeloader.cli.commands.common import Subcommands, format_time, with_client
from edgeloader.cli.output import Console, table
from edgeloader.roles import Role

__all__ = ["add_keys_commands"]

VALIDITIES = ("1h", "1d", "7d", "30d", "never")


def add_keys_commands(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    keys = commands.add_parser(
        "keys",
        help="API keys for agents (admins)",
        description="Create, list and revoke API keys (the /api/keys routes; Admin or ApiAdmin).",
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = sub.add_parser(
        "create",
        parents=[parent],
        help="create a key; it is shown once",
        description=(
            "Create an API key. The key is printed once, on stdout; the service keeps only "
            "its hash. An agent exchanges it for tokens at POST /api/auth/token."
        ),
    )
    create.add_argument("name", metavar="NAME", help="what the key is for")
    create.add_argument(
        "--role", required=True, choices=[r.value for r in Role], help="the key's role"
    )
    create.add_argument(
        "--validity", default="30d", choices=VALIDITIES, help="how long it works (default: 30d)"
    )
    create.set_defaults(func=with_client(create_command))

    listing = sub.add_parser("list", parents=[parent], help="list keys (never their secrets)")
    listing.set_defaults(func=with_client(list_command))

    revoke = sub.add_parser(
        "revoke", parents=[parent], help="revoke a key; its tokens stop working at once"
    )
    revoke.add_argument("key_id", metavar="ID", help="the key's id (from `keys list`)")
    revoke.set_defaults(func=with_client(revoke_command))


async def create_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    body = {"name": args.name, "role": args.role, "validity": args.validity}
    key = await client.call("POST", "/api/keys", json=body, expect=(201,))
    out.result(key, str(key["apiKey"]))
    out.note(
        f"key {key['id']} ({key['role']}) expires {format_time(key.get('expiresAt'))}: "
        "it is shown this once, store it now"
    )
    return 0


KEY_COLUMNS = ("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES")


def _key_row(key: dict[str, Any]) -> tuple[str, ...]:
    state = "revoked" if key.get("revokedAt") else "active"
    return (
        str(key["id"]),
        str(key["name"]),
        str(key["role"]),
        state,
        format_time(key.get("createdAt")),
        format_time(key.get("expiresAt")),
    )


async def list_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("GET", "/api/keys")
    keys = answer.get("keys", [])
    out.result(answer, table(KEY_COLUMNS, [_key_row(k) for k in keys]))
    return 0


async def revoke_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("DELETE", f"/api/keys/{quote(args.key_id, safe='')}")
    out.result({"id": args.key_id, **answer}, f"revoked key {args.key_id}")
    return 0
