"""``GET /api/doctor``: the service's own checks (``services/diagnostics.py``),
which ``edgeloader doctor`` prints after its client-side ones."""

from __future__ import annotations

from aiohttp import web

from edgeloader.roles import ADMINS
from edgeloader.services.diagnostics import Diagnosis, diagnose
from edgeloader.web.guards import roles
from edgeloader.web.models.base import respond
from edgeloader.web.openapi import documented
from edgeloader.web.state import services

doctor_routes = web.RouteTableDef()


@doctor_routes.get("/api/doctor")
@roles(*ADMINS)
@documented(
    "Check the service, its upstreams, the engine and its machine",
    tag="observability",
    answers={200: Diagnosis},
    description=(
        "Each check is one line, `ok`, `warn` or `fail`, from the settings the service "
        "runs with and its live objects; docs/cli.md lists what each one looks at."
    ),
)
async def doctor(request: web.Request) -> web.Response:
    svc = services(request)
    return respond(await diagnose(svc.settings, svc.engine, svc.functions, svc.gate))
