"""Following a function run to its end: ``fn logs --follow`` and
``fn invoke --async --wait`` (docs/cli.md, "Functions").

The event stream is opened first, then the run is started (or looked up),
so nothing it prints after that is missed: ``run-output`` events carry its
output, the ``run`` event with a final status its end. A service without
the stream, a stream not open to the caller, or one that ends early, is
followed by polling ``GET /api/runs/{id}`` instead. The run's final record
is read over REST either way: it is what the command reports (and what
says whether a run ended while its events were being dropped).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from edgeloader.cli.client import Client, ServiceUnreachable
from edgeloader.cli.events import read_events

__all__ = ["FINAL", "Printed", "follow_run", "run_path"]

JSON = dict[str, Any]
FINAL = frozenset({"succeeded", "failed", "timeout", "oom"})
POLL_SECONDS = 0.25

#: Told each piece of output: ``(stdout, stderr)``.
OnOutput = Callable[[str, str], None]


@dataclass
class Printed:
    """What a follower has seen of a run's output."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


def run_path(run_id: str) -> str:
    return f"/api/runs/{quote(run_id, safe='')}"


async def _final(client: Client, run_id: str) -> JSON:
    while True:
        record: JSON = await client.call("GET", run_path(run_id))
        if record.get("status") in FINAL:
            return record
        await asyncio.sleep(POLL_SECONDS)


async def follow_run(
    client: Client,
    start: Callable[[], Awaitable[str]],
    on_output: OnOutput | None = None,
) -> tuple[JSON, Printed]:
    """Opens the event stream, calls ``start`` (which gives the run's id),
    tells ``on_output`` what the run prints until it ends, and returns its
    final record with what was seen."""
    printed = Printed()
    headers = {"Accept": "text/event-stream"}
    run_id: str | None = None
    try:
        async with client.request("GET", "/api/events", headers=headers, expect=None) as resp:
            # Any other answer (404, 403, ...) is followed by polling.
            streaming = resp.status == 200 and resp.content_type.startswith("text/event-stream")
            run_id = await start()
            record: JSON = await client.call("GET", run_path(run_id))
            if record.get("status") in FINAL:
                return record, printed
            if not streaming:
                return await _final(client, run_id), printed
            async for event in read_events(resp.content):
                if event.name == "dropped":  # the run's end may be among the lost
                    if (await client.call("GET", run_path(run_id))).get("status") in FINAL:
                        break
                    continue
                if event.name not in ("run", "run-output"):
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    continue
                if not isinstance(data, dict) or data.get("runId") != run_id:
                    continue
                if event.name == "run-output":
                    stdout, stderr = str(data.get("stdout") or ""), str(data.get("stderr") or "")
                    printed.stdout.append(stdout)
                    printed.stderr.append(stderr)
                    if on_output is not None:
                        on_output(stdout, stderr)
                elif data.get("status") in FINAL:
                    break
    except ServiceUnreachable:
        if run_id is None:
            raise
        # The stream broke: polling says whether the service is gone.
    return await _final(client, run_id), printed
