"""The application factory and its typed state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from edgeloader import hardware
from edgeloader.config import Settings
from edgeloader.pipelines.cache import ModelCache
from edgeloader.pipelines.session import DeviceSession
from edgeloader.pipelines.unlock import UnlockManager
from edgeloader.upstream.engine import Engine
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader.web.middlewares import error_middleware
from edgeloader.web.routes import routes
from edgeloader.web.state import SERVICES, SETTINGS, Services

log = logging.getLogger(__name__)


# Largest JSON body a route accepts; uploads stream and are limited separately.
MAX_JSON_BODY = 64 * 1024


def create_app(settings: Settings, *, fingerprint: str | None = None) -> web.Application:
    """Builds the loader. ``fingerprint`` overrides the device's own (tests)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JSON_BODY)
    app[SETTINGS] = settings
    app.add_routes(routes)

    async def services(app: web.Application) -> AsyncIterator[None]:
        device = fingerprint if fingerprint else await asyncio.to_thread(hardware.fingerprint)
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
        app[SERVICES] = Services(settings, session, cache, engine, unlock)
        try:
            yield
        finally:
            await unlock.close()
            await session.close()
            await engine.close()
            await http.close()

    app.cleanup_ctx.append(services)
    return app
