"""Function routes (DESIGN §8, docs/functions.md): parse, call the service,
shape the answer.

Every route needs an access token; deploying, updating, building and
deleting need ``Admin`` or ``ApiAdmin``. The service audits deploys,
updates, builds, deletes and invocations itself, with their durations.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web

from edgeloader.errors import PayloadTooLarge, ValidationFailed
from edgeloader.functions.service import Caller, FunctionService
from edgeloader.functions.spec import function_name
from edgeloader.roles import ADMINS
from edgeloader.web.guards import require_principal, roles
from edgeloader.web.routes import json_body
from edgeloader.web.state import services

function_routes = web.RouteTableDef()
MAX_SPEC_PART = 64 * 1024
# Room for the multipart framing around a build context.
MULTIPART_SLACK = 1 << 20
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _functions(request: web.Request) -> FunctionService:
    return services(request).functions


def _caller(request: web.Request) -> Caller:
    claims = require_principal(request)
    return Caller(claims.subject, claims.role, f"{request.method} {request.path}")


@function_routes.post("/api/functions")
@roles(*ADMINS)
async def deploy(request: web.Request) -> web.Response:
    body = await json_body(request)
    record = await _functions(request).deploy(body, _caller(request))
    return web.json_response(record.as_json(), status=201)


@function_routes.get("/api/functions")
async def list_functions(request: web.Request) -> web.Response:
    records = await _functions(request).all()
    return web.json_response({"functions": [r.as_json() for r in records]})


@function_routes.get("/api/functions/{name}")
async def get_function(request: web.Request) -> web.Response:
    record = await _functions(request).get(request.match_info["name"])
    return web.json_response(record.as_json())


@function_routes.put("/api/functions/{name}")
@roles(*ADMINS)
async def update(request: web.Request) -> web.Response:
    function_name(request.match_info["name"])
    body = await json_body(request)
    record = await _functions(request).update(request.match_info["name"], body, _caller(request))
    return web.json_response(record.as_json())


@function_routes.delete("/api/functions/{name}")
@roles(*ADMINS)
async def delete(request: web.Request) -> web.Response:
    await _functions(request).delete(request.match_info["name"], _caller(request))
    return web.json_response({"status": "deleted"})


@function_routes.post("/api/functions/{name}/build")
@roles(*ADMINS)
async def build(request: web.Request) -> web.Response:
    name = function_name(request.match_info["name"])
    functions = _functions(request)
    limit = functions.settings.build_context_max
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"build context larger than {limit} bytes")
    if not request.content_type.startswith("multipart/"):
        raise ValidationFailed(
            "build must be multipart/form-data with a file field 'context' (a tar archive)"
        )
    reader = await request.multipart()
    spec: dict[str, Any] | None = None
    async with functions.staged_context() as context:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationFailed("nested multipart bodies are not supported")
            if part.name == "context":
                if context.size:
                    raise ValidationFailed("only one multipart field 'context' is allowed")
                await context.fill(_part_chunks(part))
            elif part.name == "spec":
                spec = _spec_part(await _small_part(part))
            else:
                raise ValidationFailed(f"unknown multipart field {part.name!r}")
        record, created = await functions.build(name, context, spec, _caller(request))
    return web.json_response(record.as_json(), status=201 if created else 200)


@function_routes.post("/api/functions/{name}/invoke")
async def invoke(request: web.Request) -> web.Response:
    function_name(request.match_info["name"])
    asynchronous = _flag(request.query.get("async", ""), "async")
    functions = _functions(request)
    body = await _raw_body(request, functions.settings.request_max)
    run = await functions.invoke(
        request.match_info["name"], body, _caller(request), wait=not asynchronous
    )
    if asynchronous:
        return web.json_response({"runId": run.run_id}, status=202)
    return web.json_response(run.as_json())


@function_routes.get("/api/functions/{name}/stats")
async def stats(request: web.Request) -> web.Response:
    result = await _functions(request).stats(request.match_info["name"])
    return web.json_response(result.as_json())


@function_routes.get("/api/functions/{name}/executions")
async def executions(request: web.Request) -> web.Response:
    limit = _integer(request, "limit", 20)
    offset = _integer(request, "offset", 0)
    runs, total = await _functions(request).executions(request.match_info["name"], limit, offset)
    return web.json_response({"executions": [r.as_json() for r in runs], "total": total})


@function_routes.get("/api/runs")
async def list_runs(request: web.Request) -> web.Response:
    function = request.query.get("function") or None
    runs = await _functions(request).runs(
        function=function_name(function) if function is not None else None,
        status=request.query.get("status") or None,
        since=_epoch(request, "since"),
        limit=_integer(request, "limit", 100),
    )
    return web.json_response({"runs": [r.as_json() for r in runs]})


@function_routes.get("/api/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    run = await _functions(request).run(request.match_info["run_id"])
    return web.json_response(run.as_json())


@function_routes.get("/api/runs/{run_id}/logs")
async def run_logs(request: web.Request) -> web.Response:
    output = await _functions(request).output(request.match_info["run_id"])
    return web.json_response(output.as_json())


async def _raw_body(request: web.Request, limit: int) -> bytes:
    """The body, refused past ``limit`` (413) without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return bytes(body)


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 20):
        yield chunk


async def _small_part(part: BodyPartReader) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        data += chunk
        if len(data) > MAX_SPEC_PART:
            raise PayloadTooLarge(f"multipart field 'spec' larger than {MAX_SPEC_PART} bytes")
    return bytes(data)


def _spec_part(data: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(data)
    except ValueError:
        raise ValidationFailed("multipart field 'spec' must be JSON") from None
    if not isinstance(spec, dict):
        raise ValidationFailed("multipart field 'spec' must be a JSON object")
    return spec


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValidationFailed(f"query parameter '{name}' must be true or false")


def _integer(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValidationFailed(f"query parameter '{name}' must be a whole number") from None


def _epoch(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name, "")
    try:
        return float(raw) if raw else None
    except ValueError:
        raise ValidationFailed(f"query parameter '{name}' must be epoch seconds") from None
