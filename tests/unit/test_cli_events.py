"""Following an unlock: the event-stream parser, the stream when the
service has one, and polling when it has none or the stream breaks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeloader.cli.client import Client
from edgeloader.cli.credentials import CredentialStore
from edgeloader.cli.events import UNLOCK, EventParser, StreamEvent
from edgeloader.cli.events import follow as follow_status
from tests.support.harness.net import serve

Status = dict[str, Any]


def status(state: str, done: int = 0, error: str | None = None) -> Status:
    return {"state": state, "error": error, "bytesDone": done, "bytesTotal": 100}


def test_the_parser_follows_the_event_stream_format() -> None:
    parser = EventParser()
    lines = [
        ": keep-alive",
        "event: unlock",
        "id: 7",
        'data: {"state":',
        'data:  "ready"}',
        "",
        "",  # a blank line with nothing pending is no event
        "data: plain",
        "",
    ]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert events == [
        StreamEvent("unlock", '{"state":\n "ready"}', "7"),
        StreamEvent("message", "plain", "7"),
    ]


class FakeUnlock:
    """``/unlock/status`` walks through ``statuses``; ``/api/events`` serves
    ``events`` (None: the route does not exist)."""

    def __init__(self, statuses: list[Status], events: list[tuple[str, Any]] | None) -> None:
        self.statuses = statuses
        self.events = events
        self.polls = 0

    def app(self) -> web.Application:
        async def unlock_status(request: web.Request) -> web.Response:
            index = min(self.polls, len(self.statuses) - 1)
            self.polls += 1
            return web.json_response(self.statuses[index])

        async def events(request: web.Request) -> web.StreamResponse:
            assert self.events is not None
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b": hello\n\n")
            for name, data in self.events:
                text = data if isinstance(data, str) else json.dumps(data)
                await response.write(f"event: {name}\ndata: {text}\n\n".encode())
                await asyncio.sleep(0.01)
            return response

        app = web.Application()
        app.router.add_get("/unlock/status", unlock_status)
        if self.events is not None:
            app.router.add_get("/api/events", events)
        return app


@pytest.fixture
async def follow(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def run(fake: FakeUnlock) -> tuple[Status, list[str]]:
        runner, url = await serve(fake.app())
        runners.append(runner)
        seen: list[str] = []
        async with Client(url, CredentialStore(tmp_path)) as client:
            final = await follow_status(
                client, UNLOCK, lambda s: seen.append(s["state"]), poll_interval=0.01
            )
        return final, seen

    yield run
    for runner in runners:
        await runner.cleanup()


async def test_the_event_stream_is_followed(follow: Callable[..., Any]) -> None:
    fake = FakeUnlock(
        [status("authenticating")],
        [
            ("run", {"runId": "x", "status": "running"}),  # another kind: skipped
            ("unlock", status("decrypting", 40)),
            ("unlock", "not json"),
            ("unlock", status("loading_images", 100)),
            ("unlock", status("ready", 100)),
            ("unlock", status("decrypting", 1)),  # never read
        ],
    )
    final, seen = await follow(fake)
    assert final == status("ready", 100)
    assert seen == ["authenticating", "decrypting", "loading_images", "ready"]
    assert fake.polls == 1  # the catch-up only


async def test_an_unlock_already_over_when_the_stream_opens(follow: Callable[..., Any]) -> None:
    fake = FakeUnlock([status("ready", 100)], [("unlock", status("decrypting", 1))])
    final, seen = await follow(fake)
    assert (final["state"], seen) == ("ready", ["ready"])


async def test_without_the_stream_the_status_is_polled(follow: Callable[..., Any]) -> None:
    fake = FakeUnlock(
        [
            status("authenticating"),
            status("decrypting", 50),
            status("error", 50, "decryption failed"),
        ],
        None,
    )
    final, seen = await follow(fake)
    assert final == status("error", 50, "decryption failed")
    assert seen == ["authenticating", "decrypting", "error"]


async def test_a_stream_that_ends_early_falls_back_to_polling(
    follow: Callable[..., Any],
) -> None:
    fake = FakeUnlock(
        [status("decrypting", 10), status("decrypting", 10), status("ready", 100)],
        [("unlock", status("decrypting", 20))],
    )
    final, seen = await follow(fake)
    assert final["state"] == "ready"
    assert seen[:2] == ["decrypting", "decrypting"]
    assert seen[-1] == "ready"
