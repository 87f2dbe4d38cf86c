"""Pre-staging routes: start a background download into the model cache,
and follow it (``services/prefetch.py``)."""

from __future__ import annotations

from aiohttp import web

from edgeloader.errors import Conflict
from edgeloader.names import safe_folder, safe_name
from edgeloader.services.prefetch import PrefetchService
from edgeloader.web.guards import AUDIT_RESOURCE, audited
from edgeloader.web.routes import DEFAULT_FOLDER, json_body
from edgeloader.web.state import services

prefetch_routes = web.RouteTableDef()


def _service(request: web.Request) -> PrefetchService:
    prefetch = services(request).prefetch
    if prefetch is None:
        raise Conflict("pre-staging is not available")
    return prefetch


@prefetch_routes.post("/api/prefetch")
@audited("prefetch")
async def start_prefetch(request: web.Request) -> web.Response:
    """Any authenticated role, as for loads: 202 and the job's state (a
    resource already in the cache is ``done`` after one look at the API)."""
    body = await json_body(request, "name")
    name = safe_name(body["name"], "name")
    folder = safe_folder(body.get("folder") or DEFAULT_FOLDER)
    request[AUDIT_RESOURCE] = f"{folder}/{name}"
    status = await _service(request).start(folder, name)
    return web.json_response(status.as_json(), status=202)


@prefetch_routes.get("/api/prefetch/{folder}/{name}")
async def prefetch_status(request: web.Request) -> web.Response:
    folder = safe_folder(request.match_info["folder"])
    name = safe_name(request.match_info["name"], "name")
    status = await _service(request).status(folder, name)
    return web.json_response(status.as_json())
