"""Function routes (docs/functions.md, "Routes"): parse, call the service,
shape the answer.

Every route needs an access token; deploying, updating, building and
deleting need ``Admin`` or ``ApiAdmin``. The service audits deploys,
updates, builds, deletes and invocations itself, with their durations.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edgeloader.errors import PayloadTooLarge, ValidationFailed
from edgeloader.functions.records import FunctionRecord, RunOutput, RunRecord, RunStats
from edgeloader.functions.service import Caller, FunctionService
from edgeloader.functions.spec import NAME_SCHEMA, FunctionSpec, function_name
from edgeloader.roles import ADMINS
from edgeloader.web.bodies import Form, read_json, read_query, read_raw, require_json
from edgeloader.web.guards import require_principal, roles
from edgeloader.web.models.base import AnyJson, JsonObject, respond
from edgeloader.web.models.functions import (
    BuildForm,
    Deleted,
    Executions,
    ExecutionsQuery,
    FunctionDeploy,
    FunctionRecords,
    InvokeQuery,
    RunAccepted,
    RunRecords,
    RunsQuery,
)
from edgeloader.web.openapi import Body, Param, Reply, documented
from edgeloader.web.state import services
from edgeloader.wire import parse_json

function_routes = web.RouteTableDef()
# Room for the multipart framing around a build context.
MULTIPART_SLACK = 1 << 20

NAME = Param("the function's name", {"type": "string", **NAME_SCHEMA})
RUN_ID = Param("the run's id")
UNSAFE = "an unsafe function name"
ENGINE = "the container engine failed or is unreachable"


def _functions(request: web.Request) -> FunctionService:
    return services(request).functions


def _caller(request: web.Request) -> Caller:
    claims = require_principal(request)
    return Caller(claims.subject, claims.role, f"{request.method} {request.path}")


@function_routes.post("/api/functions")
@roles(*ADMINS)
@documented(
    "Deploy a function from an image in the engine",
    tag="functions",
    body=FunctionDeploy,
    answers={201: FunctionRecord},
    errors={
        400: UNSAFE,
        404: "the image is not in the engine",
        409: "the name is taken",
        422: "a bad or unknown field",
        502: ENGINE,
    },
)
async def deploy(request: web.Request) -> web.Response:
    # The service checks the fields (and audits a refused deploy).
    body = (await read_json(request, JsonObject)).root
    record = await _functions(request).deploy(body, _caller(request))
    return respond(record, 201)


@function_routes.get("/api/functions")
@documented("List the functions", tag="functions", answers={200: FunctionRecords})
async def list_functions(request: web.Request) -> web.Response:
    records = await _functions(request).all()
    return FunctionRecords(functions=records).response()


@function_routes.get("/api/functions/{name}")
@documented(
    "A function's record",
    tag="functions",
    path={"name": NAME},
    answers={200: FunctionRecord},
    errors={400: UNSAFE, 404: "no such function"},
)
async def get_function(request: web.Request) -> web.Response:
    record = await _functions(request).get(request.match_info["name"])
    return respond(record)


@function_routes.put("/api/functions/{name}")
@roles(*ADMINS)
@documented(
    "Update a function: a new version",
    tag="functions",
    path={"name": NAME},
    body=FunctionSpec,
    answers={200: FunctionRecord},
    errors={
        400: UNSAFE,
        404: "no such function, or the image is not in the engine",
        422: "a bad or unknown field",
        502: ENGINE,
    },
)
async def update(request: web.Request) -> web.Response:
    function_name(request.match_info["name"])
    body = (await read_json(request, JsonObject)).root
    record = await _functions(request).update(request.match_info["name"], body, _caller(request))
    return respond(record)


@function_routes.delete("/api/functions/{name}")
@roles(*ADMINS)
@documented(
    "Delete a function; runs admitted finish and records stay",
    tag="functions",
    path={"name": NAME},
    answers={200: Deleted},
    errors={400: UNSAFE, 404: "no such function"},
)
async def delete(request: web.Request) -> web.Response:
    await _functions(request).delete(request.match_info["name"], _caller(request))
    return Deleted().response()


@function_routes.post("/api/functions/{name}/build")
@roles(*ADMINS)
@documented(
    "Build a function's image from a context and deploy it",
    tag="functions",
    path={"name": NAME},
    body=Body(
        BuildForm, "multipart/form-data", encoding={"spec": {"contentType": "application/json"}}
    ),
    answers={
        201: Reply("A new function", FunctionRecord),
        200: Reply("A new version of the function", FunctionRecord),
    },
    errors={
        400: UNSAFE,
        413: "the context is larger than EDGELOADER_BUILD_CONTEXT_MAX, or `spec` than 64 KiB",
        422: "not multipart, an unknown or repeated field, no context, not a tar, no "
        "Dockerfile, a base image not in the engine, a bad `spec`, or a failed build "
        "(with the engine's last lines)",
        502: ENGINE,
    },
)
async def build(request: web.Request) -> web.Response:
    name = function_name(request.match_info["name"])
    functions = _functions(request)
    limit = functions.settings.build_context_max
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"build context larger than {limit} bytes")
    form = await Form.open(request, "a file field 'context' (a tar archive)")
    spec: dict[str, Any] | None = None
    async with functions.staged_context() as context:
        while (part := await form.next()) is not None:
            if part.name == "context":
                if context.size:
                    raise ValidationFailed("only one multipart field 'context' is allowed")
                await context.fill(form.chunks(part, 1 << 20))
            elif part.name == "spec":
                spec = parse_json(await form.small(part), JsonObject, "multipart field 'spec'").root
            else:
                raise ValidationFailed(f"unknown multipart field {part.name!r}")
        record, created = await functions.build(name, context, spec, _caller(request))
    return respond(record, 201 if created else 200)


@function_routes.post("/api/functions/{name}/invoke")
@documented(
    "Invoke a function",
    tag="functions",
    path={"name": NAME},
    query=InvokeQuery,
    body=Body(AnyJson, required=False, description="any JSON, `{}` when empty"),
    answers={
        200: Reply("The run's record once it has ended, whatever its status", RunRecord),
        202: Reply("Accepted (`async=true`): the run goes on", RunAccepted),
    },
    errors={
        400: UNSAFE,
        404: "no such function",
        413: "the body is larger than EDGELOADER_INVOKE_BODY_MAX",
        415: "a body not sent as application/json",
        429: "the function's queue is full, with Retry-After",
        503: "functions are off: the engine does not see the loader's run folders",
    },
)
async def invoke(request: web.Request) -> web.Response:
    function_name(request.match_info["name"])
    asynchronous = read_query(request, InvokeQuery).asynchronous
    functions = _functions(request)
    require_json(request)
    body = await read_raw(request, functions.settings.request_max)
    run = await functions.invoke(
        request.match_info["name"], body, _caller(request), wait=not asynchronous
    )
    if asynchronous:
        return RunAccepted(run_id=run.run_id).response(202)
    return respond(run)


@function_routes.get("/api/functions/{name}/stats")
@documented(
    "A function's run statistics",
    tag="functions",
    path={"name": NAME},
    answers={200: RunStats},
    errors={400: UNSAFE, 404: "no such function"},
)
async def stats(request: web.Request) -> web.Response:
    result = await _functions(request).stats(request.match_info["name"])
    return respond(result)


@function_routes.get("/api/functions/{name}/executions")
@documented(
    "A function's runs, newest first",
    tag="functions",
    path={"name": NAME},
    query=ExecutionsQuery,
    answers={200: Executions},
    errors={400: UNSAFE},
)
async def executions(request: web.Request) -> web.Response:
    query = read_query(request, ExecutionsQuery)
    runs, total = await _functions(request).executions(
        request.match_info["name"], query.limit, query.offset
    )
    return Executions(executions=runs, total=total).response()


@function_routes.get("/api/runs")
@documented(
    "Runs, newest first",
    tag="runs",
    query=RunsQuery,
    answers={200: RunRecords},
    errors={400: "an unsafe function name"},
)
async def list_runs(request: web.Request) -> web.Response:
    query = read_query(request, RunsQuery)
    runs = await _functions(request).runs(
        function=function_name(query.function) if query.function is not None else None,
        status=query.status,
        since=query.since,
        limit=query.limit,
    )
    return RunRecords(runs=runs).response()


@function_routes.get("/api/runs/{run_id}")
@documented(
    "A run's record",
    tag="runs",
    path={"run_id": RUN_ID},
    answers={200: RunRecord},
    errors={404: "no such run"},
)
async def get_run(request: web.Request) -> web.Response:
    run = await _functions(request).run(request.match_info["run_id"])
    return respond(run)


@function_routes.get("/api/runs/{run_id}/logs")
@documented(
    "A run's output: stdout, stderr and its logs.json",
    tag="runs",
    path={"run_id": RUN_ID},
    answers={200: RunOutput},
    errors={
        404: "no such run, or no output kept (never started, or past retention)",
        409: "the run has not ended",
    },
)
async def run_logs(request: web.Request) -> web.Response:
    output = await _functions(request).output(request.match_info["run_id"])
    return respond(output)
