"""One error middleware: our exception hierarchy → JSON ``{"detail"}``."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from edgeloader.errors import DeviceNotLoggedIn, EdgeloaderError, TooManyAttempts

log = logging.getLogger(__name__)


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
        headers = (
            {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyAttempts) else None
        )
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
