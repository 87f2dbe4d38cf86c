"""The base of every HTTP model, and reading a request through one.

Request bodies are validated strictly (a number is not a string, ``true``
is not 1); query strings leniently, since every value arrives as text.
Every failure is one ``ValidationFailed`` (422) whose detail names the
field. Answers are serialised by their field aliases (``camelCase``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    RootModel,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, core_schema

from edgeloader.errors import PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)


class RequestBody(BaseModel):
    """A JSON request body: strict types; unknown fields are ignored, as
    Azaion clients may send more than we read."""

    model_config = ConfigDict(
        strict=True, extra="ignore", alias_generator=to_camel, validate_by_name=True
    )


class StrictBody(RequestBody):
    """A body whose unknown fields are refused (422 naming the field)."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Query parameters: text converted to the field's type."""

    model_config = ConfigDict(extra="ignore", validate_by_name=True)


class Answer(BaseModel):
    """A JSON answer: exactly these fields, by their aliases."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=True)

    def response(self, status: int = 200) -> web.Response:
        return web.json_response(self.model_dump(mode="json", by_alias=True), status=status)


class AnyJson(RootModel[Any]):
    """Any JSON value."""


class JsonObject(RootModel[dict[str, Any]]):
    """A JSON object, its fields checked by the service."""


class ErrorAnswer(Answer):
    """Every error: what went wrong, in words."""

    detail: str


@dataclass(frozen=True)
class OneOf:
    """``Annotated[str, OneOf(values)]``: one of ``values`` (kept where the
    rule lives), documented as an enum."""

    values: tuple[str, ...]

    def _check(self, value: str) -> str:
        if value not in self.values:
            raise ValueError(f"must be one of: {', '.join(self.values)}")
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


def field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def error_detail(error: ErrorDetails, what: str) -> str:
    """One pydantic error as a sentence naming the field."""
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        if "recursion limit" in error["msg"]:
            return f"{what} is nested too deeply"
        return f"{what} must be JSON"
    if not loc:
        return f"{what} must be a JSON object"
    name = field_path(loc)
    label = "query parameter" if what == "query" else "field"
    if kind == "missing":
        return f"{label} '{name}' is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{label} '{name}': {message[:1].lower()}{message[1:]}"


def parse_json(raw: bytes, model: type[M], what: str = "request body") -> M:
    """``raw`` as ``model``, or ``ValidationFailed`` naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(error_detail(exc.errors()[0], what)) from None


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
