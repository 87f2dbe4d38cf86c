"""The web layer's side of the wire models (``edgeloader.wire``): its own
answers, query strings and loose JSON; ``web/bodies.py`` reads requests
through them."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, RootModel

from edgeloader.wire import Record, RequestBody, StrictBody

__all__ = [
    "Answer",
    "AnyJson",
    "ErrorAnswer",
    "JsonObject",
    "Query",
    "RequestBody",
    "StrictBody",
    "respond",
]


def respond(model: Record, status: int = 200) -> web.Response:
    """``model`` as the JSON answer."""
    return web.json_response(model.wire(), status=status)


class Answer(Record):
    """A JSON answer that only the web layer gives."""

    def response(self, status: int = 200) -> web.Response:
        return respond(self, status)


class Query(BaseModel):
    """Query parameters: text converted to the field's type (leniently,
    since every value arrives as text)."""

    model_config = ConfigDict(extra="ignore", validate_by_name=True)


class AnyJson(RootModel[Any]):
    """Any JSON value."""


class JsonObject(RootModel[dict[str, Any]]):
    """A JSON object, its fields checked by the service."""


class ErrorAnswer(Answer):
    """Every error: what went wrong, in words."""

    detail: str
