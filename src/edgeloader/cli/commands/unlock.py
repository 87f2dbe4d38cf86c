"""``edgeloader unlock [--wait]``: load the encrypted service images into
the engine, and follow it to the end, naming the images it loaded."""

from __future__ import annotations

import argparse
from typing import Any

from edgeloader.cli.client import ApiError, Client
from edgeloader.cli.commands.auth import add_credential_options, read_credentials
from edgeloader.cli.commands.common import Subcommands, format_bytes, with_client
from edgeloader.cli.commands.follow import StatusView, add_wait_options, wait_for_end
from edgeloader.cli.events import FINAL_STATES, UNLOCK, current_status
from edgeloader.cli.output import Console
from edgeloader.errors import EdgeloaderError

__all__ = ["add_unlock_command"]


class UnlockFailed(EdgeloaderError):
    """The unlock failed."""


def add_unlock_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    unlock = commands.add_parser(
        "unlock",
        parents=[parent],
        help="decrypt the service images into the engine",
        description=(
            "Start the unlock (POST /unlock) with an upstream user's email and password "
            "(a prompt, or --password-stdin; the email defaults to the logged-in user's). "
            "With --wait, follow it to the end: the service's event stream, or "
            "/unlock/status where there is none, and name the images it loaded. "
            "Exit 0 when ready, 1 when it failed."
        ),
    )
    add_credential_options(unlock)
    add_wait_options(unlock, "unlock")
    unlock.set_defaults(func=with_client(unlock_command))


def _counting(status: dict[str, Any]) -> bool:
    """The bar starts with the decryption (bytes read so far count too)."""
    done = status.get("bytesDone")
    return status["state"] == "decrypting" or (isinstance(done, int) and done > 0)


async def unlock_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    stored = client.pair()
    email, password = read_credentials(args, stored.user if stored else "")
    answer = await client.call("POST", "/unlock", json={"email": email, "password": password})
    if not isinstance(answer, dict) or not isinstance(answer.get("state"), str):
        raise ApiError(200, "the answer has no state")
    if not args.wait:
        out.result(answer, f"unlock: {answer['state']}")
        return 1 if answer["state"] == "error" else 0
    if answer["state"] in FINAL_STATES:
        # POST /unlock answers the state alone; the status has the rest (the images).
        status = await current_status(client, UNLOCK)
        if status["state"] == answer["state"]:
            answer = status
    final = await wait_for_end(
        client,
        UNLOCK,
        StatusView(out, "unlock", FINAL_STATES, _counting),
        answer,
        args.timeout,
        lambda state: UnlockFailed(f"the unlock is still {state} after {args.timeout:g} s"),
    )
    if final["state"] != "ready":
        out.result(final, None)  # said once, as the error line; --json gets the status
        raise UnlockFailed(f"unlock failed: {final.get('error') or 'unknown error'}")
    out.result(final, ready_line(final))
    return 0


def ready_line(status: dict[str, Any]) -> str:
    """``unlock: ready``, with the images it loaded and the bytes it decrypted
    (a service that names no images: the bytes only)."""
    total = status.get("bytesTotal")
    decrypted = isinstance(total, int) and total > 0
    size = f" ({format_bytes(int(total or 0))} decrypted)" if decrypted else ""
    raw = status.get("images")
    images = [str(i) for i in raw] if isinstance(raw, list) else []
    if not images:
        return f"unlock: ready{size}"
    if decrypted:
        return f"unlock: ready, loaded {', '.join(images)}{size}"
    return f"unlock: ready, {', '.join(images)} already in the engine"
