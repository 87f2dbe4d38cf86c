"""Reading request bodies: JSON through a model, raw bytes, query strings
and ``multipart/form-data`` fields, each with its limit.

Every route reads its body through here, so every malformed, truncated,
oversized or mistyped body gets the same answers: 400 for a body that is
not what its content type says (a broken multipart frame), 413 past a
limit, 422 for content that does not fit the route (the detail names the
field). A client that goes away mid-body is not an error of ours: its
``ConnectionError`` goes on up.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from edgeloader.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from edgeloader.wire import error_detail, parse_json

__all__ = ["Form", "read_json", "read_query", "read_raw", "require_json"]

M = TypeVar("M", bound=BaseModel)

#: The largest small field (a folder name, a JSON ``spec``).
SMALL_FIELD = 64 * 1024
_PIECE = 1 << 16


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as ``model``: 415 unless it is sent as JSON
    (``Content-Type: application/json``: a form or text body is what a
    cross-site page can send without asking), 413 past the app's body limit
    (``client_max_size``), 422 for anything malformed."""
    require_json(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    return parse_json(raw, model)


def require_json(request: web.Request) -> None:
    """415 unless the body is declared JSON (a body-less request passes)."""
    if request.content_length == 0 or not request.body_exists:
        return
    media_type = request.content_type
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    raise UnsupportedMediaType(
        f"send the body as JSON with Content-Type: application/json, not {media_type}"
    )


async def read_raw(request: web.Request, limit: int) -> bytes:
    """The body's bytes, refused past ``limit`` (413) without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    body = bytearray()
    async for piece in request.content.iter_chunked(_PIECE):
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return bytes(body)


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


@contextlib.contextmanager
def _framing() -> Iterator[None]:
    """aiohttp's multipart reader says "malformed" with ValueError, an HTTP
    parser error (a missing boundary, an oversized header line) or a body
    that ends inside a part."""
    try:
        yield
    except (ValueError, HttpProcessingError):
        raise InvalidRequest("malformed multipart body") from None


class Form:
    """A ``multipart/form-data`` body, read field by field in its order."""

    def __init__(self, reader: MultipartReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls, request: web.Request, expected: str) -> Form:
        """The form of ``request``; 422 naming ``expected`` (what the route
        wants, in words) when the body is not multipart."""
        if not request.content_type.startswith("multipart/"):
            raise ValidationFailed(f"the body must be multipart/form-data with {expected}")
        with _framing():
            return cls(await request.multipart())

    async def next(self) -> BodyPartReader | None:
        """The next field, or None at the end."""
        with _framing():
            part = await self._reader.next()
        if part is not None and not isinstance(part, BodyPartReader):
            raise ValidationFailed("nested multipart bodies are not supported")
        return part

    async def skip(self, part: BodyPartReader) -> None:
        with _framing():
            await part.release()

    async def small(self, part: BodyPartReader, limit: int = SMALL_FIELD) -> bytes:
        """A field's bytes, 413 past ``limit``."""
        data = bytearray()
        async for piece in self.chunks(part, _PIECE, limit):
            data += piece
        return bytes(data)

    async def text(self, part: BodyPartReader, limit: int = SMALL_FIELD) -> str:
        """A field as text (UTF-8), 422 if it is not."""
        try:
            return (await self.small(part, limit)).decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationFailed(f"multipart field {part.name!r} must be UTF-8 text") from None

    async def chunks(
        self, part: BodyPartReader, chunk_size: int, limit: int | None = None
    ) -> AsyncIterator[bytes]:
        """A field's bytes as they arrive, 413 past ``limit``."""
        total = 0
        while True:
            with _framing():
                chunk = await part.read_chunk(chunk_size)
            if not chunk:
                return
            total += len(chunk)
            if limit is not None and total > limit:
                raise PayloadTooLarge(f"multipart field {part.name!r} larger than {limit} bytes")
            yield chunk
