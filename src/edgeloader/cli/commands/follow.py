"""``--wait`` for commands that start background work on the service (an
unlock, a pre-staging job): states as lines, bytes as a progress bar, and
an optional time limit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from edgeloader.cli.client import Client
from edgeloader.cli.events import Followed, follow
from edgeloader.cli.output import Console, Progress
from edgeloader.errors import EdgeloaderError

__all__ = ["StatusView", "add_wait_options", "wait_for_end"]

Status = dict[str, Any]


def add_wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"follow the {what} to its end")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default: never)",
    )


class StatusView:
    """Each new state as a line (``LABEL: state``, with the status's error
    when it has one), and the bytes as a progress bar once ``counting`` says
    the status counts them, from the bytes done then (a job resumed, or seen
    late, is not read as bytes moved in no time). Final states are left to
    the command's result."""

    def __init__(
        self,
        out: Console,
        label: str,
        final: frozenset[str],
        counting: Callable[[Status], bool] = lambda _status: True,
    ) -> None:
        self.out = out
        self.label = label
        self.final = final
        self.counting = counting
        self.state = ""
        self.progress: Progress | None = None

    def __call__(self, status: Status) -> None:
        state = str(status["state"])
        done, total = status.get("bytesDone"), status.get("bytesTotal")
        if state != self.state:
            self.state = state
            if not self.out.json_mode and state not in self.final:
                error = status.get("error")
                line = f"{self.label}: {state}" + (f" ({error})" if error else "")
                (self.progress.note if self.progress else self.out.note)(line)
        if not (isinstance(done, int) and isinstance(total, int) and total > 0):
            return
        if self.counting(status):
            if self.progress is None:
                if state in self.final:
                    return  # over before a byte was seen moving: the result says it all
                # The bytes done before the bar appears are not in its rate.
                self.progress = self.out.progress(self.label, total, initial=done)
            self.progress.update_to(done, total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


async def wait_for_end(
    client: Client,
    followed: Followed,
    view: StatusView,
    first: Status,
    seconds: float,
    too_long: Callable[[str], EdgeloaderError],
) -> Status:
    """The final status, from the answer that started the work (``first``)
    on; ``too_long(state)`` is raised once ``seconds`` (if > 0) pass."""
    limit = asyncio.timeout(seconds) if seconds > 0 else contextlib.nullcontext()
    try:
        async with limit:
            view(first)
            if first["state"] in followed.final:
                return first
            return await follow(client, followed, view)
    except TimeoutError:
        raise too_long(view.state or "running") from None
    finally:
        view.close()
