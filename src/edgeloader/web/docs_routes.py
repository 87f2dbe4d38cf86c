"""``GET /docs``: Swagger UI over ``/openapi.json``, public like the document.

A box has no internet, so nothing here is fetched from elsewhere: the page
is ours, and the two files of Swagger UI it loads are served from the
``swagger-ui-bundle`` package the wheel depends on. The page's script is a
file of its own too (``/docs/docs.js``), so the page's Content-Security-
Policy allows scripts from this origin only, never inline ones. The paths
are public in ``web/guards.py``'s ``PUBLIC_PATHS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import swagger_ui_bundle
from aiohttp import web

from edgeloader.web.openapi import Reply, documented

__all__ = ["ASSETS", "PAGE_POLICY", "docs_routes"]

docs_routes = web.RouteTableDef()

#: Swagger UI's files, from the installed package.
BUNDLE = Path(swagger_ui_bundle.swagger_ui_path)
JAVASCRIPT = "text/javascript"
#: The page's own scripts and styles only. Swagger UI draws its icons from
#: ``data:`` images in its stylesheet, shows an image an operation answered
#: from a ``blob:`` URL, and sets element styles as it renders.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Relative links: the page works under a reverse proxy's path prefix too.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edgeloader API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/docs.js"></script>
</body>
</html>
"""
#: Swagger UI's settings: the document beside the page, no validator (it
#: would send the document to a server elsewhere), no top bar.
INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
#: Path under ``/docs/`` → (file in the bundle, media type).
ASSETS = {
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", JAVASCRIPT),
}
#: The files change only with the package, so a browser may keep them a day.
CACHE = "public, max-age=86400"


@docs_routes.get("/docs")
@documented(
    "This API in Swagger UI",
    tag="meta",
    answers={200: Reply("The page", media_type="text/html", schema={"type": "string"})},
    description="Served from files the wheel ships; the page loads nothing from elsewhere.",
)
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(
        text=PAGE,
        content_type="text/html",
        headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"},
    )


@docs_routes.get("/docs/docs.js")
@documented(
    "The script that starts Swagger UI on /docs",
    tag="meta",
    answers={200: Reply("The script", media_type=JAVASCRIPT, schema={"type": "string"})},
)
async def docs_script(request: web.Request) -> web.Response:
    return web.Response(
        text=INIT,
        content_type=JAVASCRIPT,
        headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"},
    )


def _asset(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    file, media_type = ASSETS[name]

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {
            "Content-Type": media_type,
            "Cache-Control": CACHE,
            "X-Content-Type-Options": "nosniff",
        }
        return web.FileResponse(BUNDLE / file, headers=headers)

    # The operation's id is the handler's name: one per file.
    handler.__name__ = handler.__qualname__ = "docs_" + name.replace("-", "_").replace(".", "_")
    described = documented(
        f"Swagger UI's {name}, for /docs",
        tag="meta",
        answers={200: Reply("The file", media_type=media_type, schema={"type": "string"})},
    )
    return described(handler)


for _name in ASSETS:
    docs_routes.get(f"/docs/{_name}")(_asset(_name))
