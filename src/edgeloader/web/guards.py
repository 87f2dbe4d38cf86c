"""Who may call what: the auth and audit middlewares and the route marks
they read.

Handlers are marked with decorators (``azaion``, ``roles``, ``audited``);
the middlewares enforce the marks, so a handler never checks tokens itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from edgeloader.auth.service import API_KEY_PREFIX
from edgeloader.auth.tokens import Claims
from edgeloader.errors import Forbidden, NotAuthenticated
from edgeloader.web.state import services

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

PRINCIPAL = web.RequestKey("principal", Claims)
AUDIT_RESOURCE = web.RequestKey("audit_resource", str)
AUDIT_BYTES = web.RequestKey("audit_bytes", int)
AUDIT_OUTCOME = web.RequestKey("audit_outcome", str)
#: Work of the request that goes on if its client leaves (an upload being
#: published); the audit then waits for it and records how it ended.
AUDIT_FINISHING = web.RequestKey("audit_finishing", asyncio.Task)
# Audits waiting for such work, kept from the garbage collector.
_late_audits: set[asyncio.Task[None]] = set()


def finishes_without_client(request: web.Request, work: asyncio.Task[Any]) -> None:
    """Marks ``work`` as the request's outcome should its client leave."""
    request[AUDIT_FINISHING] = work


#: Routes anyone may call: health, the ways to obtain tokens, the keys that
#: verify them and the API's description (the document and its page). The
#: Azaion ``/login`` logs the device in, so it is one.
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/login",
        "/api/auth/login",
        "/api/auth/token",
        "/api/auth/refresh",
        "/api/auth/keys.json",
        "/openapi.json",
        # The API's page and the files it loads (web/docs_routes.py).
        "/docs",
        "/docs/docs.js",
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
    }
)


def azaion(handler: F) -> F:
    """An Azaion.Loader route: token-free in ``compat`` mode."""
    handler.__dict__["edgeloader_azaion"] = True
    return handler


def optional_token(handler: F) -> F:
    """A public route that reads a bearer token when one is sent (a bad one
    is still 401): ``POST /login`` lets an admin's token change the device's
    upstream user."""
    handler.__dict__["edgeloader_optional_token"] = True
    return handler


def key_bearer(handler: F) -> F:
    """The route also takes an API key (``elk_…``) as the bearer itself, not
    only an access token: ``/metrics``, since a scraper sends one static
    token. The key is checked (and throttled) on every call."""
    handler.__dict__["edgeloader_key_bearer"] = True
    return handler


def roles(*allowed: str) -> Callable[[F], F]:
    """Only these roles may call the route (any authenticated role if unmarked)."""

    def mark(handler: F) -> F:
        handler.__dict__["edgeloader_roles"] = frozenset(allowed)
        return handler

    return mark


def audited(action: str) -> Callable[[F], F]:
    """Every call of the route is written to the audit log."""

    def mark(handler: F) -> F:
        handler.__dict__["edgeloader_audit"] = action
        return handler

    return mark


def _mark(request: web.Request, name: str) -> Any:
    return getattr(request.match_info.handler, "__dict__", {}).get(name)


@dataclass(frozen=True)
class RouteMarks:
    """A handler's marks as the middlewares read them (the OpenAPI document
    derives each route's security from these)."""

    azaion: bool
    optional_token: bool
    key_bearer: bool
    roles: frozenset[str] | None


def route_marks(handler: object) -> RouteMarks:
    marks = getattr(handler, "__dict__", {})
    return RouteMarks(
        azaion=bool(marks.get("edgeloader_azaion")),
        optional_token=bool(marks.get("edgeloader_optional_token")),
        key_bearer=bool(marks.get("edgeloader_key_bearer")),
        roles=marks.get("edgeloader_roles"),
    )


def principal(request: web.Request) -> Claims | None:
    return request.get(PRINCIPAL)


def require_principal(request: web.Request) -> Claims:
    claims = principal(request)
    if claims is None:
        raise NotAuthenticated("a bearer access token is required")
    return claims


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        return await handler(request)
    svc = services(request)
    if request.path in PUBLIC_PATHS:
        if _mark(request, "edgeloader_optional_token") and "Authorization" in request.headers:
            request[PRINCIPAL] = await svc.auth.authenticate(_bearer(request))
        return await handler(request)
    if svc.settings.auth_mode == "compat" and _mark(request, "edgeloader_azaion"):
        return await handler(request)
    token = _bearer(request)
    if _mark(request, "edgeloader_key_bearer") and token.startswith(API_KEY_PREFIX + "_"):
        claims = await svc.auth.authenticate_api_key(
            token, client_address(request), f"{request.method} {request.path}"
        )
    else:
        claims = await svc.auth.authenticate(token)
    request[PRINCIPAL] = claims
    allowed: frozenset[str] | None = _mark(request, "edgeloader_roles")
    if allowed is not None and claims.role not in allowed:
        raise Forbidden(
            f"role {claims.role or 'none'} may not call {request.method} {request.path}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return await handler(request)


def bearer(request: web.Request) -> str:
    """The request's bearer token, or NotAuthenticated."""
    return _bearer(request)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("a bearer access token is required")
    return token.strip()


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the final status, including errors turned into answers.

    A client that leaves makes aiohttp cancel the handler; the entry is
    still written (shielded from that cancellation), as "client disconnected".
    """
    action = _mark(request, "edgeloader_audit")
    if not action:
        return await handler(request)
    try:
        response = await handler(request)
    except (asyncio.CancelledError, ConnectionError):
        work = request.get(AUDIT_FINISHING)
        if work is not None and not work.done():
            late = asyncio.create_task(_audit_when_done(request, action, work))
            _late_audits.add(late)
            late.add_done_callback(_late_audits.discard)
        else:
            await asyncio.shield(_audit(request, action, _left(work)))
        raise
    outcome = request.get(AUDIT_OUTCOME) or (
        "ok" if response.status < 400 else f"error {response.status}"
    )
    await asyncio.shield(_audit(request, action, outcome))
    return response


def _left(work: asyncio.Task[Any] | None) -> str:
    if work is None:
        return "client disconnected"
    if work.cancelled() or work.exception() is not None:
        return "client disconnected; it failed"
    return "ok; finished after the client disconnected"


async def _audit_when_done(request: web.Request, action: str, work: asyncio.Task[Any]) -> None:
    await asyncio.wait([work])
    await _audit(request, action, _left(work))


async def _audit(request: web.Request, action: str, outcome: str) -> None:
    claims = principal(request)
    await services(request).auth.auditor.record(
        subject=claims.subject if claims else "anonymous",
        role=claims.role if claims else "",
        action=action,
        route=f"{request.method} {request.path}",
        resource=request.get(AUDIT_RESOURCE, ""),
        outcome=outcome,
        bytes_=request.get(AUDIT_BYTES, 0),
    )
