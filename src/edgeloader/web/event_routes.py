"""``GET /api/events``: the event bus as a Server-Sent Events stream
(docs/events.md).

The stream opens with the unlock's current state, then carries the events
the caller may see (by its role, or as the identity an event names: a
run's invoker sees its ``run-output``; the bus decides), a ``: heartbeat`` comment whenever nothing
happened for ``events_heartbeat`` seconds, and ends with an ``end`` event
when the service stops or the caller's access token expires or is revoked
(checked at each heartbeat). A client that goes away ends it too.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from edgeloader.errors import NotAuthenticated
from edgeloader.events import END, Event
from edgeloader.web.guards import bearer, require_principal
from edgeloader.web.openapi import Reply, documented
from edgeloader.web.state import Services, services

event_routes = web.RouteTableDef()

HEARTBEAT = b": heartbeat\n\n"


def frame(event: Event) -> bytes:
    """One SSE message; the JSON holds no raw newline, so one ``data:`` line."""
    data = json.dumps(event.data, separators=(",", ":"))
    return f"event: {event.type}\ndata: {data}\n\n".encode()


async def _token_ended(svc: Services, token: str, expires_at: float) -> str | None:
    """Why the caller's token no longer holds, or None."""
    if time.time() >= expires_at:
        return "token expired"
    try:
        await svc.auth.authenticate(token)
    except NotAuthenticated:
        return "token revoked"
    return None


@event_routes.get("/api/events")
@documented(
    "A Server-Sent Events stream of the box's changes",
    tag="observability",
    answers={
        200: Reply(
            "`event: TYPE` and one `data:` line of JSON per message (unlock, run, "
            "run-output, prefetch, security, dropped, end), with `: heartbeat` comments; "
            "docs/events.md",
            media_type="text/event-stream",
            schema={"type": "string"},
        )
    },
    errors={429: "too many streams are open, with Retry-After"},
    description=(
        "Needs an access token (not an API key); the events follow the role, and a "
        "run's output (`run-output`) goes to admins and the run's invoker only."
    ),
)
async def events(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    claims = require_principal(request)
    token = bearer(request)
    heartbeat = svc.settings.events_heartbeat
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a buffering proxy would hold events back
        }
    )
    with svc.events.subscribe(claims.role, claims.subject) as subscription:
        await response.prepare(request)
        svc.metrics.event_streams.inc()
        try:
            await response.write(frame(svc.unlock.status.event()))
            while True:
                wait = min(heartbeat, max(0.0, claims.expires_at - time.time()))
                event = await subscription.next(wait)
                if event is None:
                    reason = await _token_ended(svc, token, claims.expires_at)
                    if reason is None:
                        await response.write(HEARTBEAT)
                        continue
                    event = Event(END, {"reason": reason})
                await response.write(frame(event))
                if event.type == END:
                    break
        except ConnectionError:
            return response  # the client went away
        finally:
            svc.metrics.event_streams.dec()
    await response.write_eof()
    return response
