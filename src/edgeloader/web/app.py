"""The application factory and its typed state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from edgeloader import hardware
from edgeloader.auth.service import open_auth
from edgeloader.config import Settings
from edgeloader.functions.service import open_functions
from edgeloader.services.cache import ModelCache
from edgeloader.services.manifest import ReleaseGate
from edgeloader.services.session import DeviceSession
from edgeloader.services.unlock import UnlockManager
from edgeloader.upstream.engine import Engine
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader.web.auth_routes import auth_routes
from edgeloader.web.function_routes import function_routes
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
    app.add_routes(function_routes)

    app.cleanup_ctx.append(_services(settings, fingerprint))
    return app


def _services(
    settings: Settings, fingerprint: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services(app: web.Application) -> AsyncIterator[None]:
        # Each resource is closed by the stack, in reverse order of opening,
        # also when a later one fails to open.
        async with contextlib.AsyncExitStack() as stack:
            gate = ReleaseGate.from_settings(settings.publisher_key, settings.state_dir)
            device = fingerprint if fingerprint else await asyncio.to_thread(hardware.fingerprint)
            auth = await stack.enter_async_context(open_auth(settings, device))
            http = await stack.enter_async_context(aiohttp.ClientSession(raise_for_status=False))
            api = ResourceApiClient(
                settings.resource_api_url,
                http,
                timeout=settings.api_timeout,
                jwt_key=settings.upstream_jwt_key,
            )
            session = DeviceSession(settings, api, device)
            stack.push_async_callback(session.close)
            engine = Engine(settings.docker_host)
            stack.push_async_callback(engine.close)
            unlock = UnlockManager(session, engine, gate, auth)
            stack.push_async_callback(unlock.close)
            functions = await stack.enter_async_context(
                open_functions(settings, engine, auth.auditor)
            )
            cache = ModelCache(settings.cache_dir) if settings.cache_dir else None
            if cache is not None:
                await asyncio.to_thread(cache.remove_partials)
            app[SERVICES] = Services(
                settings, session, cache, engine, unlock, auth, gate, functions
            )
            yield

    return services
