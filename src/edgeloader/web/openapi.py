"""The OpenAPI 3.1 document, built from the handlers themselves.

Each handler declares its operation with ``@documented(...)``: a summary,
its request body and query models (the same models it validates with),
its path parameters, its answers and its error answers. What the guards
enforce is read from their marks, not declared again: the security (bearer
token, API key, none), the roles (403), and 401 with ``WWW-Authenticate``.
A JSON body adds its 413 and 422, a query model its 422, and every
answer names its ``X-Request-ID``. ``GET /openapi.json`` serves the
document, built once per app from ``app.router``; a route without a
declaration is left out of it and listed by ``undocumented``, which a test
keeps empty.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import hdrs, web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from edgeloader import __version__
from edgeloader.web.guards import PUBLIC_PATHS, RouteMarks, route_marks
from edgeloader.web.models.base import ErrorAnswer

F = TypeVar("F", bound=Callable[..., Any])

OPENAPI_VERSION = "3.1.0"
MARK = "edgeloader_operation"
JSON = "application/json"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_ERROR_REF = "#/components/schemas/ErrorAnswer"
#: The largest JSON body (the app's ``client_max_size``), for the 413's words.
JSON_LIMIT = "64 KiB"


@dataclass(frozen=True)
class Reply:
    """One documented answer of an operation."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON
    #: The schema of a body that is not a model (text, a byte stream).
    schema: Mapping[str, Any] | None = None
    #: Header name → description, beside ``X-Request-ID``.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: More media types with the same schema (``/metrics``' OpenMetrics).
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Body:
    """A request body; a bare model in ``@documented(body=...)`` is JSON."""

    model: type[BaseModel]
    media_type: str = JSON
    required: bool = True
    description: str = ""
    #: Per-field encodings of a multipart body (``{"spec": {"contentType": ...}}``).
    encoding: Mapping[str, Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Param:
    """A path parameter."""

    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    answers: Mapping[int, Reply]
    errors: Mapping[int, str]
    body: Body | None
    query: type[BaseModel] | None
    path: Mapping[str, Param]
    description: str


def documented(
    summary: str,
    *,
    tag: str,
    answers: Mapping[int, Reply | type[BaseModel]],
    errors: Mapping[int, str] | None = None,
    body: Body | type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path: Mapping[str, Param] | None = None,
    description: str = "",
) -> Callable[[F], F]:
    """Declares a handler's operation for the document.

    ``answers`` maps a status to its model (its docstring's first line is
    the description) or a ``Reply``; ``errors`` maps a status to what it
    means, each answered as ``{"detail": str}``.
    """
    operation = Operation(
        summary=summary,
        tag=tag,
        answers={status: _reply(answer) for status, answer in answers.items()},
        errors=dict(errors or {}),
        body=body if body is None or isinstance(body, Body) else Body(body),
        query=query,
        path=dict(path or {}),
        description=description,
    )

    def mark(handler: F) -> F:
        handler.__dict__[MARK] = operation
        return handler

    return mark


def _reply(answer: Reply | type[BaseModel]) -> Reply:
    if isinstance(answer, Reply):
        return answer
    # The docstring's first paragraph, or what pydantic gives every model.
    doc = inspect.cleandoc(answer.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    return Reply(doc if answer.__doc__ else "OK", answer)


def operation_of(handler: object) -> Operation | None:
    found = getattr(handler, "__dict__", {}).get(MARK)
    return found if isinstance(found, Operation) else None


def _routes(app: web.Application) -> Iterator[tuple[str, str, Any]]:
    """(method, path, handler) of every route; HEAD is GET's twin."""
    for resource in app.router.resources():
        for route in resource:
            if route.method != hdrs.METH_HEAD:
                yield route.method, resource.canonical, route.handler


def undocumented(app: web.Application) -> list[str]:
    """Routes without ``@documented``: none, or the document is incomplete."""
    return [
        f"{method} {path}"
        for method, path, handler in _routes(app)
        if operation_of(handler) is None
    ]


# -- the document --------------------------------------------------------------------------


class _Schemas:
    """Every model's schema, once, under ``components/schemas``."""

    def __init__(self) -> None:
        self._wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
            (ErrorAnswer, "serialization")
        ]

    def want(self, model: type[BaseModel], mode: JsonSchemaMode) -> None:
        if (model, mode) not in self._wanted:
            self._wanted.append((model, mode))

    def build(self) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
        refs, defs = models_json_schema(self._wanted, ref_template="#/components/schemas/{model}")
        return dict(refs), defs.get("$defs", {})


def build_document(app: web.Application) -> dict[str, Any]:
    operations = [
        (method, path, handler, op)
        for method, path, handler in _routes(app)
        if (op := operation_of(handler)) is not None
    ]
    schemas = _Schemas()
    for _, _, _, op in operations:
        if op.body is not None:
            schemas.want(op.body.model, "validation")
        for reply in op.answers.values():
            if reply.model is not None:
                schemas.want(reply.model, "serialization")
    refs, components = schemas.build()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler, op in operations:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler, op, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "edgeloader",
            "version": __version__,
            "description": (
                "The loader's HTTP API, generated from the models that validate its "
                "requests. Security is the default `required` auth mode; in `compat` mode "
                "the routes marked `x-edgeloader-compat-public` need no token. Every error "
                'is `{"detail": str}`; unknown routes are 404 and wrong methods 405 '
                "(with `Allow`), in the same shape."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from /api/auth/login, /api/auth/token, "
                    "/api/auth/refresh or POST /login",
                },
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`elk_…`) itself as the bearer token, where "
                    "a route takes one (GET /metrics)",
                },
            },
            "headers": {
                "X-Request-ID": {
                    "description": "The request's id: its own X-Request-ID when it sent a "
                    "safe one, else a new one",
                    "schema": {"type": "string"},
                }
            },
        },
    }


def _operation(
    method: str, path: str, handler: Any, op: Operation, refs: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    marks = route_marks(handler)
    public = path in PUBLIC_PATHS
    notes = [op.description] if op.description else []
    if marks.roles is not None:
        notes.append(f"Roles: {', '.join(sorted(marks.roles))}.")
    if marks.azaion and not public:
        notes.append("In `compat` auth mode this Azaion route needs no token.")
    result: dict[str, Any] = {
        "operationId": f"{op.tag}.{handler.__name__}",
        "summary": op.summary,
        "tags": [op.tag],
    }
    if notes:
        result["description"] = " ".join(notes)
    if public:
        result["security"] = [{}, {"bearer": []}] if marks.optional_token else []
    elif marks.key_bearer:
        result["security"] = [{"bearer": []}, {"apiKey": []}]
    else:
        result["security"] = [{"bearer": []}]
    if marks.azaion:
        result["x-edgeloader-compat-public"] = True
    if marks.roles is not None:
        result["x-edgeloader-roles"] = sorted(marks.roles)
    parameters = _path_parameters(path, op) + _query_parameters(op)
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        result["requestBody"] = _request_body(op.body, refs)
    result["responses"] = _responses(op, public, marks, refs)
    return result


def _path_parameters(path: str, op: Operation) -> list[dict[str, Any]]:
    parameters = []
    for name in _PATH_PARAM.findall(path):
        param = op.path.get(name, Param(name))
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": param.description,
                "schema": dict(param.schema),
            }
        )
    return parameters


def _query_parameters(op: Operation) -> list[dict[str, Any]]:
    if op.query is None:
        return []
    schema = op.query.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(prop)
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query value is text or absent, never JSON null."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    options = prop.pop("anyOf", None)
    if options is not None:
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1:
            prop = {**kept[0], **prop}
        else:
            prop["anyOf"] = kept
    if prop.get("default", ...) is None:
        del prop["default"]
    return prop


def _request_body(body: Body, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": refs[(body.model, "validation")]}
    if body.encoding:
        content["encoding"] = {name: dict(e) for name, e in body.encoding.items()}
    result: dict[str, Any] = {"required": body.required, "content": {body.media_type: content}}
    if body.description:
        result["description"] = body.description
    return result


def _automatic_errors(op: Operation, public: bool, marks: RouteMarks) -> dict[int, str]:
    errors: dict[int, str] = {}
    if op.body is not None and op.body.media_type == JSON:
        errors[413] = f"the body is larger than {JSON_LIMIT}"
        errors[422] = (
            "the body is not JSON, nested too deeply, not an object, or a field is "
            "missing or of the wrong type (the detail names the field)"
        )
    if op.query is not None:
        errors[422] = _join(errors.get(422), "a query parameter is malformed or out of range")
    if not public:
        errors[401] = "no bearer token, or an invalid, expired or revoked one"
    elif marks.optional_token:
        errors[401] = "a bearer token was sent and is invalid, expired or revoked"
    if marks.roles is not None:
        errors[403] = "the token's role may not call this route"
    return errors


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def _responses(
    op: Operation, public: bool, marks: RouteMarks, refs: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    responses: dict[int, dict[str, Any]] = {}
    for status, reply in op.answers.items():
        responses[status] = _answer(reply, refs)
    errors = _automatic_errors(op, public, marks)
    for status, words in op.errors.items():
        errors[status] = _join(words, errors[status]) if status in errors else words
    for status, words in errors.items():
        responses[status] = _error(status, words)
    return {str(status): responses[status] for status in sorted(responses)}


def _headers(extra: Mapping[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    for name, description in extra.items():
        headers[name] = {
            "description": description,
            "required": name in required,
            "schema": {"type": "string"},
        }
    return headers


def _answer(reply: Reply, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"description": reply.description, "headers": _headers(reply.headers)}
    if reply.model is not None:
        schema: Mapping[str, Any] = refs[(reply.model, "serialization")]
    elif reply.schema is not None:
        schema = reply.schema
    else:
        return result
    result["content"] = {
        media_type: {"schema": dict(schema)}
        for media_type in (reply.media_type, *reply.alternatives)
    }
    return result


_ERROR_HEADERS: dict[int, tuple[str, str]] = {
    401: ("WWW-Authenticate", "`Bearer`"),
    429: ("Retry-After", "seconds to wait before trying again"),
}


def _error(status: int, words: str) -> dict[str, Any]:
    header = _ERROR_HEADERS.get(status)
    extra = {header[0]: header[1]} if header else {}
    return {
        "description": words,
        "headers": _headers(extra, required=tuple(extra)),
        "content": {JSON: {"schema": {"$ref": _ERROR_REF}}},
    }


# -- the route ---------------------------------------------------------------------------

openapi_routes = web.RouteTableDef()
_documents: weakref.WeakKeyDictionary[web.Application, dict[str, Any]] = weakref.WeakKeyDictionary()


def document(app: web.Application) -> dict[str, Any]:
    """The app's document, built once (the router is frozen by then)."""
    if app not in _documents:
        _documents[app] = build_document(app)
    return _documents[app]


@openapi_routes.get("/openapi.json")
@documented(
    "This API's OpenAPI 3.1 document",
    tag="meta",
    answers={200: Reply("The document", schema={"type": "object"})},
)
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))
