"""Pre-staging routes: start a background download into the model cache,
and follow it (``services/prefetch.py``)."""

from __future__ import annotations

from aiohttp import web

from edgeloader.names import safe_folder, safe_name
from edgeloader.services.prefetch import PrefetchService, PrefetchStatus
from edgeloader.web.bodies import read_json
from edgeloader.web.guards import AUDIT_RESOURCE, audited, client_address, principal
from edgeloader.web.models.azaion import FOLDER_SCHEMA, NAME_SCHEMA
from edgeloader.web.models.base import respond
from edgeloader.web.models.prefetch import PrefetchBody
from edgeloader.web.openapi import Param, Reply, documented
from edgeloader.web.routes import DEFAULT_FOLDER
from edgeloader.web.state import services

prefetch_routes = web.RouteTableDef()


def _service(request: web.Request) -> PrefetchService:
    return services(request).prefetch


NO_CACHE = "no model cache is configured (EDGELOADER_CACHE_DIR)"


@prefetch_routes.post("/api/prefetch")
@audited("prefetch")
@documented(
    "Pre-stage a resource into the model cache, in the background",
    tag="prefetch",
    body=PrefetchBody,
    answers={202: Reply("The job's state; a running job is not started twice", PrefetchStatus)},
    errors={
        400: "an unsafe name or folder",
        409: NO_CACHE,
        429: "too many unfinished jobs (in all, or of this caller), with Retry-After",
    },
)
async def start_prefetch(request: web.Request) -> web.Response:
    """Any authenticated role, as for loads: 202 and the job's state (a
    resource already in the cache is ``done`` after one look at the API)."""
    body = await read_json(request, PrefetchBody)
    name = safe_name(body.name, "name")
    folder = safe_folder(body.folder or DEFAULT_FOLDER)
    request[AUDIT_RESOURCE] = f"{folder}/{name}"
    claims = principal(request)
    owner = claims.subject if claims is not None else client_address(request)
    status = await _service(request).start(folder, name, owner)
    return respond(status, 202)


@prefetch_routes.get("/api/prefetch/{folder}/{name}")
@documented(
    "A pre-staging job's state",
    tag="prefetch",
    path={
        "folder": Param("the folder", {"type": "string", **FOLDER_SCHEMA}),
        "name": Param("the resource's name", {"type": "string", **NAME_SCHEMA}),
    },
    answers={200: PrefetchStatus},
    errors={400: "an unsafe name or folder", 404: "never pre-staged", 409: NO_CACHE},
)
async def prefetch_status(request: web.Request) -> web.Response:
    folder = safe_folder(request.match_info["folder"])
    name = safe_name(request.match_info["name"], "name")
    status = await _service(request).status(folder, name)
    return respond(status)
