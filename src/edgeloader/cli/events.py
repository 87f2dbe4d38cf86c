"""Following an unlock or a pre-staging job: the service's event stream,
or polling.

``GET /api/events`` is a Server-Sent Events stream; an unlock's progress
arrives as ``event: unlock`` with ``data: {"state", "error", "bytesDone",
"bytesTotal"}``, a pre-staging job's as ``event: prefetch`` with its folder
and name too. A service without the stream (404, 405, 501, or an answer
that is not ``text/event-stream``), one whose stream is not open to the
caller (403), or a stream that ends before the job does, is followed by
polling its status route instead (for an unlock ``GET /unlock/status``,
the Azaion route every version has).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from edgeloader.cli.client import Client, ServiceUnreachable, raise_for_answer

__all__ = [
    "FINAL_STATES",
    "UNLOCK",
    "EventParser",
    "Followed",
    "StreamEvent",
    "follow",
    "read_events",
]

FINAL_STATES = frozenset({"ready", "error"})
POLL_SECONDS = 0.25
#: Answers that mean "no event stream here": follow by polling.
NO_STREAM = frozenset({403, 404, 405, 501})

Status = dict[str, Any]
OnStatus = Callable[[Status], None]


@dataclass(frozen=True)
class StreamEvent:
    name: str
    data: str
    id: str | None = None


@dataclass
class EventParser:
    """The text/event-stream format, one line at a time (without its end)."""

    _name: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> StreamEvent | None:
        """The event that ``line`` completes (a blank line), if any."""
        if line == "":
            if not self._data:
                self._name = ""
                return None
            event = StreamEvent(self._name or "message", "\n".join(self._data), self._id)
            self._name, self._data = "", []
            return event
        if line.startswith(":"):  # a comment: keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[StreamEvent]:
    parser = EventParser()
    while line := await content.readline():
        event = parser.feed(line.decode("utf-8", "replace").rstrip("\r\n"))
        if event is not None:
            yield event


@dataclass(frozen=True)
class Followed:
    """Something with a status to follow: the event that carries it, the
    route that answers it, and its final states."""

    event: str
    path: str
    final: frozenset[str]
    #: Whether an event of that name is about this one (a job's name, say).
    matches: Callable[[Status], bool] = lambda _status: True


UNLOCK = Followed("unlock", "/unlock/status", FINAL_STATES)


def _status(raw: Any) -> Status | None:
    if isinstance(raw, dict) and isinstance(raw.get("state"), str):
        return raw
    return None


async def current_status(client: Client, followed: Followed) -> Status:
    status = _status(await client.call("GET", followed.path))
    if status is None:
        raise ServiceUnreachable(f"GET {followed.path}: the answer has no state")
    return status


async def _follow_stream(client: Client, followed: Followed, on_status: OnStatus) -> Status | None:
    """The final status from the event stream, or None to poll instead."""
    headers = {"Accept": "text/event-stream"}
    async with client.request("GET", "/api/events", headers=headers, expect=None) as resp:
        if resp.status in NO_STREAM or not resp.content_type.startswith("text/event-stream"):
            return None
        if resp.status != 200:
            await raise_for_answer(resp)
        # The stream may carry only what changes from now on: catch up first.
        status = await current_status(client, followed)
        on_status(status)
        if status["state"] in followed.final:
            return status
        async for event in read_events(resp.content):
            if event.name != followed.event:
                continue
            try:
                status_or_none = _status(json.loads(event.data))
            except ValueError:
                continue
            if status_or_none is None or not followed.matches(status_or_none):
                continue
            on_status(status_or_none)
            if status_or_none["state"] in followed.final:
                return status_or_none
    return None


async def _poll(client: Client, followed: Followed, on_status: OnStatus, interval: float) -> Status:
    while True:
        status = await current_status(client, followed)
        on_status(status)
        if status["state"] in followed.final:
            return status
        await asyncio.sleep(interval)


async def follow(
    client: Client,
    followed: Followed,
    on_status: OnStatus,
    *,
    poll_interval: float = POLL_SECONDS,
) -> Status:
    """Calls ``on_status`` with each status until a final state, and returns
    that last one."""
    try:
        final = await _follow_stream(client, followed, on_status)
    except ServiceUnreachable:
        final = None  # the stream broke: polling says whether the service is gone
    if final is not None:
        return final
    return await _poll(client, followed, on_status, poll_interval)
