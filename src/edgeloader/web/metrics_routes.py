"""``GET /metrics``: the app's registry for Prometheus (docs/metrics.md)."""

from __future__ import annotations

from aiohttp import web

from edgeloader.roles import ADMINS
from edgeloader.web.guards import key_bearer, roles
from edgeloader.web.state import services

metrics_routes = web.RouteTableDef()


@metrics_routes.get("/metrics")
@key_bearer
@roles(*ADMINS)
async def metrics(request: web.Request) -> web.Response:
    body, content_type = services(request).metrics.exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
