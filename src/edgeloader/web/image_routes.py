"""``GET /api/images``: the engine's images that an unlock loads and that
functions run (docs/api.md, "Images"), for the operators who deploy."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from edgeloader.roles import ADMINS
from edgeloader.services.images import EngineImage, list_images
from edgeloader.web.guards import roles
from edgeloader.web.models.base import Answer
from edgeloader.web.openapi import documented
from edgeloader.web.state import services

image_routes = web.RouteTableDef()


class EngineImages(Answer):
    """The box's images: an unlock's first, then those only functions run."""

    images: list[EngineImage] = Field(description="one per image; absent ones too")


@image_routes.get("/api/images")
@roles(*ADMINS)
@documented(
    "The engine's images that an unlock loads and that functions run",
    tag="images",
    answers={200: EngineImages},
    errors={502: "the container engine failed or is unreachable"},
    description="An image gone from the engine is listed with `present: false`.",
)
async def images(request: web.Request) -> web.Response:
    svc = services(request)
    found = await list_images(svc.engine, svc.unlock, svc.functions)
    return EngineImages(images=found).response()
