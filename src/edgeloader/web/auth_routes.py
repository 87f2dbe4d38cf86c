"""Agent authentication routes: ``/api/auth/*``, ``/api/keys``, ``/api/audit``."""

from __future__ import annotations

from aiohttp import web

from edgeloader.errors import ValidationFailed
from edgeloader.roles import ADMINS
from edgeloader.web.guards import client_address, require_principal, roles
from edgeloader.web.routes import json_body
from edgeloader.web.state import services

auth_routes = web.RouteTableDef()
MAX_AUDIT_LIMIT = 1000


def _route(request: web.Request) -> str:
    return f"{request.method} {request.path}"


@auth_routes.post("/api/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await json_body(request, "email", "password")
    svc = services(request)
    email, password = body["email"], body["password"]
    pair = await svc.auth.login(
        email,
        password,
        client_address(request),
        _route(request),
        lambda: svc.session.api.check_credentials(email, password),
    )
    assert pair is not None
    return web.json_response(pair.as_json())


@auth_routes.post("/api/auth/token")
async def token(request: web.Request) -> web.Response:
    body = await json_body(request, "apiKey")
    pair = await services(request).auth.exchange_api_key(
        body["apiKey"], client_address(request), _route(request)
    )
    return web.json_response(pair.as_json())


@auth_routes.post("/api/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await json_body(request, "refreshToken")
    pair = await services(request).auth.refresh(body["refreshToken"], _route(request))
    return web.json_response(pair.as_json())


@auth_routes.post("/api/auth/logout")
async def logout(request: web.Request) -> web.Response:
    body = await json_body(request, "refreshToken")
    await services(request).auth.logout(
        require_principal(request), body["refreshToken"], _route(request)
    )
    return web.json_response({"status": "ok"})


@auth_routes.get("/api/auth/keys.json")
async def public_keys(request: web.Request) -> web.Response:
    return web.json_response(services(request).auth.tokens.jwks())


@auth_routes.post("/api/keys")
@roles(*ADMINS)
async def create_key(request: web.Request) -> web.Response:
    body = await json_body(request, "name", "role", "validity")
    new = await services(request).auth.create_api_key(
        body["name"], body["role"], body["validity"], require_principal(request), _route(request)
    )
    # The only time the key is ever shown.
    return web.json_response({**new.record.public(), "apiKey": new.key}, status=201)


@auth_routes.get("/api/keys")
@roles(*ADMINS)
async def list_keys(request: web.Request) -> web.Response:
    keys = await services(request).auth.list_api_keys()
    return web.json_response({"keys": [k.public() for k in keys]})


@auth_routes.delete("/api/keys/{key_id}")
@roles(*ADMINS)
async def revoke_key(request: web.Request) -> web.Response:
    await services(request).auth.revoke_api_key(
        request.match_info["key_id"], require_principal(request), _route(request)
    )
    return web.json_response({"status": "revoked"})


@auth_routes.get("/api/audit")
@roles(*ADMINS)
async def audit(request: web.Request) -> web.Response:
    try:
        since = float(request.query.get("since", "0"))
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ValidationFailed("since (epoch seconds) and limit must be numbers") from None
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise ValidationFailed(f"limit must be 1-{MAX_AUDIT_LIMIT}")
    entries = await services(request).auth.store_audit(since, limit)
    return web.json_response({"entries": [e.as_dict() for e in entries]})
