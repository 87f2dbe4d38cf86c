"""The application factory and its typed state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from edgeloader import hardware
from edgeloader.auth import signing_key
from edgeloader.auth.audit import Auditor
from edgeloader.auth.service import AuthService
from edgeloader.auth.store import AuthStore
from edgeloader.auth.throttle import Throttle
from edgeloader.auth.tokens import Tokens
from edgeloader.config import Settings
from edgeloader.pipelines.cache import ModelCache
from edgeloader.pipelines.session import DeviceSession
from edgeloader.pipelines.unlock import UnlockManager
from edgeloader.upstream.engine import Engine
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader.web.auth_routes import auth_routes
from edgeloader.web.guards import audit_middleware, auth_middleware
from edgeloader.web.middlewares import error_middleware
from edgeloader.web.routes import routes
from edgeloader.web.state import SERVICES, SETTINGS, Services

log = logging.getLogger(__name__)


# Largest JSON body a route accepts; uploads stream and are limited separately.
MAX_JSON_BODY = 64 * 1024


def create_app(settings: Settings, *, fingerprint: str | None = None) -> web.Application:
    """Builds the loader. ``fingerprint`` overrides the device's own (tests)."""
    # Outermost first: audit sees final statuses, errors become JSON, then auth.
    app = web.Application(
        middlewares=[audit_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[SETTINGS] = settings
    app.add_routes(routes)
    app.add_routes(auth_routes)

    async def services(app: web.Application) -> AsyncIterator[None]:
        device = fingerprint if fingerprint else await asyncio.to_thread(hardware.fingerprint)
        key = await asyncio.to_thread(signing_key.load_or_create, settings.state_dir, device)
        store = await asyncio.to_thread(AuthStore, settings.state_dir)
        tokens = Tokens(
            key,
            issuer=settings.token_issuer,
            access_ttl=settings.access_token_ttl,
            refresh_ttl=settings.refresh_token_ttl,
        )
        auth = AuthService(store, tokens, Throttle(), Auditor(store))
        pruner = asyncio.create_task(_prune_forever(store), name="auth-store-prune")
        http = aiohttp.ClientSession(raise_for_status=False)
        api = ResourceApiClient(
            settings.resource_api_url,
            http,
            timeout=settings.api_timeout,
            jwt_key=settings.upstream_jwt_key,
        )
        session = DeviceSession(settings, api, device)
        engine = Engine(settings.docker_host)
        unlock = UnlockManager(session, engine)
        cache = ModelCache(settings.cache_dir) if settings.cache_dir else None
        app[SERVICES] = Services(settings, session, cache, engine, unlock, auth)
        try:
            yield
        finally:
            pruner.cancel()
            await unlock.close()
            await session.close()
            await engine.close()
            await http.close()
            store.close()

    app.cleanup_ctx.append(services)
    return app


async def _prune_forever(store: AuthStore, every: float = 3600.0) -> None:
    """Drops expired revocations and refresh records once an hour."""
    while True:
        removed = await asyncio.to_thread(store.prune)
        if removed:
            log.info("auth store: pruned %d expired records", removed)
        await asyncio.sleep(every)
