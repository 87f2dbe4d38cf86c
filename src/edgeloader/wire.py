"""The JSON the loader takes and gives, declared once.

Every body a caller sends and every record the loader answers with is a
pydantic model whose fields serialise by their ``camelCase`` aliases. The
services build and return these models, the handlers answer with them, the
event stream carries them, and ``/openapi.json`` is generated from them, so
the document, the validation and the answers cannot drift apart.

- :class:`Record`: a JSON shape; unknown fields are refused.
- :class:`RequestBody`: a request body, validated strictly (a number is not a
  string, ``true`` is not 1); unknown fields are ignored, as Azaion
  clients may send more than we read. :class:`StrictBody` refuses them.
- :func:`validate` and :func:`parse_json`: a failure is one
  ``ValidationFailed`` (422) whose detail names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, core_schema

from edgeloader.errors import ValidationFailed

__all__ = ["OneOf", "Record", "RequestBody", "StrictBody", "error_detail", "parse_json", "validate"]

M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    """A JSON shape: exactly these fields, by their aliases."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True
    )

    def wire(self) -> dict[str, Any]:
        """The JSON object, as sent."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Self:
        """A record from a database row holding its fields in declared order."""
        return cls.model_validate(dict(zip(cls.model_fields, row, strict=True)))


class RequestBody(Record):
    """A request body: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class StrictBody(RequestBody):
    """A request body whose unknown fields are refused (422 naming the field)."""

    model_config = ConfigDict(extra="forbid")


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


def _field_path(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """The field's dotted name, and which item or key of it (or "")."""
    names: list[str] = []
    for position, part in enumerate(loc):
        if part == "[key]":  # the key before it is what failed
            return ".".join(names[:-1]), f" key {names[-1]!r}"
        if isinstance(part, int):
            rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[position + 1 :])
            return ".".join(names), f" item {part}{rest}"
        names.append(part)
    return ".".join(names), ""


def error_detail(error: ErrorDetails, what: str) -> str:
    """One pydantic error as a sentence naming the field."""
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        if "recursion limit" in error["msg"]:
            return f"{what} is nested too deeply"
        return f"{what} must be JSON"
    if not loc:
        return f"{what} must be a JSON object"
    name, which = _field_path(loc)
    label = "query parameter" if what == "query" else "field"
    if kind == "missing":
        return f"{label} '{name}'{which} is required"
    if kind == "extra_forbidden":
        return f"unknown {label} '{name}'{which}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{label} '{name}'{which}: {message[:1].lower()}{message[1:]}"


def validate(model: type[M], data: Any, what: str = "request body", **context: Any) -> M:
    """``data`` (already parsed) as ``model``, or ``ValidationFailed`` naming
    the first bad field; ``context`` reaches the model's validators."""
    try:
        return model.model_validate(data, context=context or None)
    except ValidationError as exc:
        raise ValidationFailed(error_detail(exc.errors()[0], what)) from None


def parse_json(raw: bytes, model: type[M], what: str = "request body") -> M:
    """``raw`` JSON as ``model``, or ``ValidationFailed`` naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(error_detail(exc.errors()[0], what)) from None
