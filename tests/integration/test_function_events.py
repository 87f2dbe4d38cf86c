"""``run-output`` events on ``GET /api/events`` from real runs on a real
engine: seen by admins and by the run's invoker only, batched, within the
run's output cap, and before the run's final ``run`` event."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from edgeloader.cli.events import read_events
from tests.support.functions import Api, sh
from tests.support.harness.net import wait_for

JSON = dict[str, Any]
FINAL = ("succeeded", "failed", "timeout", "oom")


class Stream:
    """One caller's event stream, read in a task of its own."""

    def __init__(self) -> None:
        self.events: list[tuple[str, JSON]] = []

    def output(self, run_id: str) -> list[JSON]:
        return [d for name, d in self.events if name == "run-output" and d["runId"] == run_id]

    def ended(self, run_id: str) -> bool:
        return any(
            name == "run" and d["runId"] == run_id and d["status"] in FINAL
            for name, d in self.events
        )


@contextlib.asynccontextmanager
async def stream(api: Api, token: str) -> AsyncIterator[Stream]:
    seen = Stream()
    headers = {"Authorization": f"Bearer {token}"}
    async with api.http.get(f"{api.url}/api/events", headers=headers) as resp:
        assert resp.status == 200

        async def read() -> None:
            async for event in read_events(resp.content):
                seen.events.append((event.name, json.loads(event.data)))

        task = asyncio.create_task(read())
        await wait_for(_has(seen, "unlock"), 30)  # the stream opens with the unlock's state
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _has(seen: Stream, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return any(n == name for n, _ in seen.events)

    return check


async def _ended(streams: list[Stream], run_id: str) -> None:
    async def check() -> bool:
        return all(s.ended(run_id) for s in streams)

    await wait_for(check, 60)


async def test_run_output_reaches_admins_and_the_invoker_only(api: Api) -> None:
    await api.deploy("say", command=sh("echo said; echo warned >&2"))
    async with stream(api, api.admin) as admin, stream(api, api.operator) as operator:
        by_operator = await api.invoke("say", token=api.operator)
        by_admin = await api.invoke("say")
        for run in (by_operator, by_admin):
            await _ended([admin, operator], run["runId"])
    for run in (by_operator, by_admin):
        assert "".join(d["stdout"] for d in admin.output(run["runId"])) == "said\n"
        assert "".join(d["stderr"] for d in admin.output(run["runId"])) == "warned\n"
    assert "".join(d["stdout"] for d in operator.output(by_operator["runId"])) == "said\n"
    assert operator.output(by_admin["runId"]) == []  # not the operator's run
    first = admin.output(by_admin["runId"])[0]
    assert set(first) == {"runId", "function", "stdout", "stderr"}
    assert first["function"] == "say"
    # The output comes before the run's end.
    names = [(n, d["runId"]) for n, d in admin.events if n in ("run", "run-output")]
    last_output = max(i for i, e in enumerate(names) if e == ("run-output", by_admin["runId"]))
    assert names[last_output + 1 :] == [("run", by_admin["runId"])]


async def test_output_is_batched_and_within_the_cap(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await make_api(output_max=4096)
    # 3000 lines of 8 bytes, printed as fast as the shell can: far more than the cap.
    await api.deploy(
        "chatty", command=sh("i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done")
    )
    async with stream(api, api.admin) as admin:
        run = await api.invoke("chatty")
        await _ended([admin], run["runId"])
    output = admin.output(run["runId"])
    kept = await api.get(f"/api/runs/{run['runId']}/logs")
    assert kept["truncated"] is True
    assert len(kept["stdout"]) == 4096
    assert "".join(d["stdout"] for d in output) == kept["stdout"]
    # At most one event per 0.1 s of the run (and the last, after its end).
    seconds = run["durationMs"] / 1000
    assert len(output) <= 10 * seconds + 2, (len(output), seconds)
