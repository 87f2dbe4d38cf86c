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
from edgeloader.events import EventBus
from edgeloader.functions.service import open_functions
from edgeloader.metrics import Metrics
from edgeloader.services.cache import ModelCache
from edgeloader.services.download import Transfers
from edgeloader.services.load import LoadService
from edgeloader.services.manifest import ReleaseGate
from edgeloader.services.prefetch import PrefetchService
from edgeloader.services.session import DeviceSession
from edgeloader.services.unlock import UnlockManager
from edgeloader.services.upload import Uploader
from edgeloader.upstream.cdn import preload_models
from edgeloader.upstream.engine import Engine
from edgeloader.upstream.resource_api import ResourceApiClient
from edgeloader.web.auth_routes import auth_routes
from edgeloader.web.docs_routes import docs_routes
from edgeloader.web.doctor_routes import doctor_routes
from edgeloader.web.event_routes import event_routes
from edgeloader.web.function_routes import function_routes
from edgeloader.web.guards import audit_middleware, auth_middleware
from edgeloader.web.image_routes import image_routes
from edgeloader.web.metrics_routes import metrics_routes
from edgeloader.web.middlewares import context_middleware, echo_request_id, error_middleware
from edgeloader.web.openapi import openapi_routes
from edgeloader.web.prefetch_routes import prefetch_routes
from edgeloader.web.routes import routes
from edgeloader.web.state import SERVICES, SETTINGS, Services

log = logging.getLogger(__name__)


# Largest JSON body a route accepts; uploads stream and are limited separately.
MAX_JSON_BODY = 64 * 1024


def create_app(settings: Settings, *, fingerprint: str | None = None) -> web.Application:
    """Builds the loader. ``fingerprint`` overrides the device's own (tests)."""
    # Outermost first: the request's id and metrics, audit sees final
    # statuses, errors become JSON, then auth.
    app = web.Application(
        middlewares=[context_middleware, audit_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[SETTINGS] = settings
    app.add_routes(routes)
    app.add_routes(auth_routes)
    app.add_routes(function_routes)
    app.add_routes(image_routes)
    app.add_routes(metrics_routes)
    app.add_routes(event_routes)
    app.add_routes(prefetch_routes)
    app.add_routes(openapi_routes)
    app.add_routes(docs_routes)
    app.add_routes(doctor_routes)

    app.on_response_prepare.append(echo_request_id)
    app.cleanup_ctx.append(_services(settings, fingerprint))
    app.on_shutdown.append(_end_event_streams)
    return app


async def _end_event_streams(app: web.Application) -> None:
    """Open event streams end before the server waits for its handlers."""
    if SERVICES in app:
        app[SERVICES].events.close()


def _services(
    settings: Settings, fingerprint: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services(app: web.Application) -> AsyncIterator[None]:
        # Each resource is closed by the stack, in reverse order of opening,
        # also when a later one fails to open.
        async with contextlib.AsyncExitStack() as stack:
            metrics = Metrics()
            metrics.watch_state_dir(settings.state_dir)
            events = EventBus(
                settings.events_queue,
                settings.events_max_streams,
                metrics,
                settings.events_max_streams_per_caller,
            )
            stack.callback(events.close)
            gate = ReleaseGate.from_settings(settings.publisher_key, settings.state_dir, metrics)
            device = fingerprint if fingerprint else await asyncio.to_thread(hardware.fingerprint)
            auth = await stack.enter_async_context(open_auth(settings, device, metrics, events))
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
            unlock = UnlockManager(session, engine, gate, auth, metrics, events)
            stack.push_async_callback(unlock.close)
            cache = ModelCache(settings.cache_dir) if settings.cache_dir else None
            if cache is not None:
                await asyncio.to_thread(cache.remove_partials)
            # Every CDN read of the app, loads, pre-staging and the models
            # functions mount alike, shares one budget of bytes in memory
            # and one rate cap.
            transfers = Transfers(settings.downloads, settings.chunk_size, metrics)
            await preload_models()  # the first load's CDN client is then quick to make
            loads = LoadService(session, cache, gate, transfers, metrics)
            functions = await stack.enter_async_context(
                open_functions(settings, engine, auth.auditor, loads, events)
            )
            metrics.watch_run_folders(functions.folders.usage)
            metrics.model_store_limit_bytes.set(functions.models.budget)
            prefetch = await stack.enter_async_context(
                PrefetchService(settings, session, cache, gate, transfers, events)
            )
            app[SERVICES] = Services(
                settings=settings,
                session=session,
                engine=engine,
                unlock=unlock,
                auth=auth,
                gate=gate,
                functions=functions,
                metrics=metrics,
                events=events,
                loads=loads,
                uploads=Uploader(metrics),
                prefetch=prefetch,
            )
            yield

    return services
