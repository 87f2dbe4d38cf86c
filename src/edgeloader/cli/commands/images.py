"""``edgeloader images``: the engine's images that an unlock loads and
that functions run (``GET /api/images``, Admin or ApiAdmin)."""

from __future__ import annotations

import argparse
from typing import Any

from edgeloader.cli.client import Client
from edgeloader.cli.commands.common import Subcommands, format_bytes, format_time, with_client
from edgeloader.cli.output import Console, table

__all__ = ["add_images_command"]

COLUMNS = ("IMAGE", "ID", "SIZE", "CREATED", "UNLOCK", "FUNCTIONS")


def add_images_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    images = commands.add_parser(
        "images",
        parents=[parent],
        help="the engine's images that unlock loads and functions run (admins)",
        description=(
            "List the images an unlock loads and those deployed functions run, as the "
            "engine has them; one it no longer has shows `absent` (its functions fail "
            "until they are deployed again, or the unlock runs again)."
        ),
    )
    images.set_defaults(func=with_client(images_command))


def _row(image: dict[str, Any]) -> list[str]:
    present = bool(image.get("present"))
    short = str(image.get("id") or "").removeprefix("sha256:")[:12]
    return [
        ", ".join(image.get("tags") or []) or "-",
        short or "-",
        format_bytes(image["sizeBytes"]) if image.get("sizeBytes") is not None else "-",
        format_time(image.get("createdAt")) if present else "absent",
        "yes" if image.get("unlock") else "-",
        ", ".join(f"{f['name']} v{f['version']}" for f in image.get("functions") or []) or "-",
    ]


async def images_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    answer = await client.call("GET", "/api/images")
    out.result(answer, table(COLUMNS, [_row(i) for i in answer.get("images", [])]))
    return 0
