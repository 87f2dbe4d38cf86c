"""Agent authentication routes: ``/api/auth/*``, ``/api/keys``, ``/api/audit``."""

from __future__ import annotations

from aiohttp import web

from edgeloader.auth.service import NewApiKey
from edgeloader.auth.tokens import TokenPair
from edgeloader.roles import ADMINS
from edgeloader.web.bodies import read_json, read_query
from edgeloader.web.guards import client_address, require_principal, roles
from edgeloader.web.models.auth import (
    ApiKeyExchange,
    ApiKeys,
    AuditEntries,
    AuditQuery,
    Done,
    Jwks,
    NewKeyBody,
    RefreshBody,
    Revoked,
)
from edgeloader.web.models.azaion import CredentialsBody
from edgeloader.web.models.base import respond
from edgeloader.web.openapi import Param, documented
from edgeloader.web.state import services

auth_routes = web.RouteTableDef()
THROTTLED = "too many failed attempts, with Retry-After"


def _route(request: web.Request) -> str:
    return f"{request.method} {request.path}"


@auth_routes.post("/api/auth/login")
@documented(
    "Log an agent in with an upstream user's password",
    tag="auth",
    body=CredentialsBody,
    answers={200: TokenPair},
    errors={
        401: "invalid email or password",
        429: THROTTLED,
        502: "the Resource API is unreachable or failing",
    },
    description="Checked upstream; does not change the device's own login.",
)
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, CredentialsBody)
    svc = services(request)
    email, password = body.email, body.password
    pair = await svc.auth.login(
        email,
        password,
        client_address(request),
        _route(request),
        lambda: svc.session.api.check_credentials(email, password),
    )
    assert pair is not None
    return respond(pair)


@auth_routes.post("/api/auth/token")
@documented(
    "Exchange an API key for a token pair",
    tag="auth",
    body=ApiKeyExchange,
    answers={200: TokenPair},
    errors={401: "invalid API key (unknown, wrong, revoked or expired alike)", 429: THROTTLED},
)
async def token(request: web.Request) -> web.Response:
    body = await read_json(request, ApiKeyExchange)
    pair = await services(request).auth.exchange_api_key(
        body.api_key, client_address(request), _route(request)
    )
    return respond(pair)


@auth_routes.post("/api/auth/refresh")
@documented(
    "Rotate a refresh token for a new pair",
    tag="auth",
    body=RefreshBody,
    answers={200: TokenPair},
    errors={
        401: "an invalid, expired or revoked refresh token; one already used revokes its "
        "whole family"
    },
)
async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    pair = await services(request).auth.refresh(body.refresh_token, _route(request))
    return respond(pair)


@auth_routes.post("/api/auth/logout")
@documented(
    "Revoke the caller's access token and the refresh token's family",
    tag="auth",
    body=RefreshBody,
    answers={200: Done},
    errors={403: "the refresh token is not the caller's"},
)
async def logout(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    await services(request).auth.logout(
        require_principal(request), body.refresh_token, _route(request)
    )
    return Done().response()


@auth_routes.get("/api/auth/keys.json")
@documented("The keys that verify access tokens", tag="auth", answers={200: Jwks})
async def public_keys(request: web.Request) -> web.Response:
    return web.json_response(services(request).auth.tokens.jwks())


@auth_routes.post("/api/keys")
@roles(*ADMINS)
@documented(
    "Create an API key",
    tag="keys",
    body=NewKeyBody,
    answers={201: NewApiKey},
    description="The key is in this answer only.",
)
async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, NewKeyBody)
    new = await services(request).auth.create_api_key(
        body.name, body.role, body.validity, require_principal(request), _route(request)
    )
    # The only time the key is ever shown.
    return respond(new, 201)


@auth_routes.get("/api/keys")
@roles(*ADMINS)
@documented("List the API keys, without secrets", tag="keys", answers={200: ApiKeys})
async def list_keys(request: web.Request) -> web.Response:
    keys = await services(request).auth.list_api_keys()
    return ApiKeys(keys=keys).response()


@auth_routes.delete("/api/keys/{key_id}")
@roles(*ADMINS)
@documented(
    "Revoke an API key and its access tokens",
    tag="keys",
    path={"key_id": Param("the key's id")},
    answers={200: Revoked},
    errors={404: "no such active key"},
)
async def revoke_key(request: web.Request) -> web.Response:
    await services(request).auth.revoke_api_key(
        request.match_info["key_id"], require_principal(request), _route(request)
    )
    return Revoked().response()


@auth_routes.get("/api/audit")
@roles(*ADMINS)
@documented(
    "Read the audit, oldest first", tag="audit", query=AuditQuery, answers={200: AuditEntries}
)
async def audit(request: web.Request) -> web.Response:
    query = read_query(request, AuditQuery)
    entries = await services(request).auth.store_audit(
        query.since, query.limit, newest=query.newest
    )
    return AuditEntries(entries=entries).response()
