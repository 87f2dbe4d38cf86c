"""The app's typed state, shared by the factory and the handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from edgeloader.auth.service import AuthService
from edgeloader.config import Settings
from edgeloader.events import EventBus
from edgeloader.functions.service import FunctionService
from edgeloader.metrics import Metrics
from edgeloader.services.load import LoadService
from edgeloader.services.manifest import ReleaseGate
from edgeloader.services.prefetch import PrefetchService
from edgeloader.services.session import DeviceSession
from edgeloader.services.unlock import UnlockManager
from edgeloader.services.upload import Uploader
from edgeloader.upstream.engine import Engine


@dataclass(frozen=True)
class Services:
    """Everything the handlers reach, opened and closed with the app."""

    settings: Settings
    session: DeviceSession
    engine: Engine
    unlock: UnlockManager
    auth: AuthService
    gate: ReleaseGate
    functions: FunctionService
    metrics: Metrics
    events: EventBus
    loads: LoadService
    uploads: Uploader
    prefetch: PrefetchService


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
