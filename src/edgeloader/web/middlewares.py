"""The request's context (its id, its count in the metrics) and one error
middleware: our exception hierarchy → JSON ``{"detail"}``."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from edgeloader import logs, metrics
from edgeloader.errors import DeviceNotLoggedIn, EdgeloaderError
from edgeloader.web.state import SERVICES

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
#: A request id a client may choose: bounded, and safe in any log format.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
#: The status recorded for a request whose client left before the answer.
CLIENT_GONE = 499


def request_id(request: web.BaseRequest) -> str:
    """The client's ``X-Request-ID`` when it is safe, else a new one."""
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    return sent if _CLIENT_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


def route_pattern(request: web.Request) -> str:
    """The matched route's pattern (``/load/{filename}``), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else metrics.UNMATCHED


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: gives the request its id (in the logs of everything it
    runs, and in the answer's ``X-Request-ID``), and counts the request under its final status."""
    rid = request[REQUEST_ID] = request_id(request)
    # Each request runs in its own task, so this stays with this request
    # (and the tasks it starts), through aiohttp's access log line.
    logs.REQUEST_ID.set(rid)
    svc = request.app.get(SERVICES)
    if svc is None:
        return await handler(request)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        status = CLIENT_GONE
        raise
    finally:
        svc.metrics.http_request(
            route_pattern(request), request.method, status, time.monotonic() - started
        )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer, streamed ones too, names its request."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid


def error_body(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgeloaderError as exc:
        detail = exc.detail
        if isinstance(exc, DeviceNotLoggedIn):
            detail = "not logged in: POST /login first"
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d %s", request.method, request.path, exc.status, detail)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_body(exc.status, detail, headers)
    except web.HTTPException as exc:
        if exc.empty_body or exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_body(exc.status, exc.reason, allow)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_body(500, "internal error")
