"""``edgeloader unlock [--wait]``: load the encrypted service images into
the engine, and follow it to the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from edgeloader.cli.client import ApiError, Client
from edgeloader.cli.commands.auth import add_credential_options, read_credentials
from edgeloader.cli.commands.common import Subcommands, format_bytes, with_client
from edgeloader.cli.events import FINAL_STATES, follow_unlock
from edgeloader.cli.output import Console, Progress
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
            "/unlock/status where there is none. Exit 0 when ready, 1 when it failed."
        ),
    )
    add_credential_options(unlock)
    unlock.add_argument("--wait", action="store_true", help="follow the unlock to its end")
    unlock.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default: never)",
    )
    unlock.set_defaults(func=with_client(unlock_command))


class _View:
    """States as lines, the decryption as a progress bar."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.state = ""
        self.progress: Progress | None = None

    def __call__(self, status: dict[str, Any]) -> None:
        state = str(status["state"])
        done, total = status.get("bytesDone"), status.get("bytesTotal")
        if state != self.state:
            self.state = state
            if not self.out.json_mode and state not in FINAL_STATES:  # the result says those
                (self.progress.note if self.progress else self.out.note)(f"unlock: {state}")
        started = state == "decrypting" or (isinstance(done, int) and done > 0)
        if isinstance(done, int) and isinstance(total, int) and total > 0 and started:
            if self.progress is None:
                self.progress = self.out.progress("unlock", total)
            self.progress.update_to(done, total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


async def unlock_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    stored = client.pair()
    email, password = read_credentials(args, stored.user if stored else "")
    answer = await client.call("POST", "/unlock", json={"email": email, "password": password})
    if not isinstance(answer, dict) or not isinstance(answer.get("state"), str):
        raise ApiError(200, "the answer has no state")
    if not args.wait:
        out.result(answer, f"unlock: {answer['state']}")
        return 1 if answer["state"] == "error" else 0
    view = _View(out)
    timeout = asyncio.timeout(args.timeout) if args.timeout > 0 else contextlib.nullcontext()
    try:
        async with timeout:
            if answer["state"] in FINAL_STATES:
                final: dict[str, Any] = dict(answer)
                view(final)
            else:
                view(answer)
                final = await follow_unlock(client, view)
    except TimeoutError:
        raise UnlockFailed(
            f"the unlock is still {view.state or 'running'} after {args.timeout:g} s"
        ) from None
    finally:
        view.close()
    total = final.get("bytesTotal")
    size = f" ({format_bytes(total)} decrypted)" if isinstance(total, int) and total else ""
    out.result(final, f"unlock: {final['state']}{size}")
    if final["state"] != "ready":
        raise UnlockFailed(f"unlock failed: {final.get('error') or 'unknown error'}")
    return 0
