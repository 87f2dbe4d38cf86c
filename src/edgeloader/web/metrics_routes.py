"""``GET /metrics``: the app's registry for Prometheus (docs/metrics.md)."""

from __future__ import annotations

from aiohttp import web

from edgeloader.roles import ADMINS
from edgeloader.web.guards import key_bearer, roles
from edgeloader.web.openapi import Reply, documented
from edgeloader.web.state import services

metrics_routes = web.RouteTableDef()


@metrics_routes.get("/metrics")
@key_bearer
@roles(*ADMINS)
@documented(
    "The box's Prometheus series",
    tag="observability",
    answers={
        200: Reply(
            "Prometheus's text format, or OpenMetrics when Accept asks for it",
            media_type="text/plain",
            alternatives=("application/openmetrics-text",),
            schema={"type": "string"},
        )
    },
    errors={429: "too many failed API key attempts, with Retry-After"},
    description="The bearer may be an API key itself (a scraper sends one static token).",
)
async def metrics(request: web.Request) -> web.Response:
    body, content_type = services(request).metrics.exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
