"""The web layer's side of the wire models (``edgeloader.wire``): answers,
query strings, and reading a request through a model.

Query strings are validated leniently, since every value arrives as text.
Every failure is one ``ValidationFailed`` (422) whose detail names the
field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from edgeloader.errors import PayloadTooLarge, ValidationFailed
from edgeloader.wire import Record, RequestBody, StrictBody, error_detail, parse_json

__all__ = [
    "Answer",
    "AnyJson",
    "ErrorAnswer",
    "JsonObject",
    "Query",
    "RequestBody",
    "StrictBody",
    "read_json",
    "read_query",
    "respond",
]

M = TypeVar("M", bound=BaseModel)


def respond(model: Record, status: int = 200) -> web.Response:
    """``model`` as the JSON answer."""
    return web.json_response(model.wire(), status=status)


class Answer(Record):
    """A JSON answer that only the web layer gives."""

    def response(self, status: int = 200) -> web.Response:
        return respond(self, status)


class Query(BaseModel):
    """Query parameters: text converted to the field's type."""

    model_config = ConfigDict(extra="ignore", validate_by_name=True)


class AnyJson(RootModel[Any]):
    """Any JSON value."""


class JsonObject(RootModel[dict[str, Any]]):
    """A JSON object, its fields checked by the service."""


class ErrorAnswer(Answer):
    """Every error: what went wrong, in words."""

    detail: str


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as ``model``: 413 past the app's body limit,
    422 for anything malformed."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    return parse_json(raw, model)


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model``; an empty value counts as absent."""
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if value != "":
            values.setdefault(key, value)  # the first of a repeated parameter
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(error_detail(exc.errors()[0], "query")) from None
