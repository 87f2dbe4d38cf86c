"""Bodies and answers of the Azaion.Loader routes (docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from edgeloader.auth.service import MAX_EMAIL, MAX_PASSWORD
from edgeloader.names import MAX_NAME_LENGTH
from edgeloader.services.unlock import UnlockState
from edgeloader.web.models.base import Answer, Query, RequestBody

#: How a file or folder name is documented; ``edgeloader.names`` enforces
#: it (400, not 422), including what a pattern cannot say (no ``..``).
NAME_SCHEMA: JsonDict = {
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._\-+@ ]*$",
    "maxLength": MAX_NAME_LENGTH,
    "description": "one path component, without '..' or surrounding spaces; else 400",
}
FOLDER_SCHEMA: JsonDict = {
    "pattern": r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$",
    "description": "also an S3 bucket name: 3-63 of a-z, 0-9, '.', '-'; else 400",
}


class CredentialsBody(RequestBody):
    """An upstream user's email and password."""

    email: str = Field(min_length=1, max_length=MAX_EMAIL)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class LoadBody(RequestBody):
    filename: str | None = Field(
        None, description="may be omitted; when given, it must equal the path's (else 400)"
    )
    folder: str | None = Field(
        None, description="default `models`", json_schema_extra=FOLDER_SCHEMA
    )


class UploadQuery(Query):
    folder: str | None = Field(
        None,
        description="the folder, when the form has no `folder` field (default `models`)",
        json_schema_extra=FOLDER_SCHEMA,
    )


class UploadForm(RequestBody):
    """``multipart/form-data``; ``folder`` must come before the file."""

    folder: str | None = Field(
        None, description="default `models`", json_schema_extra=FOLDER_SCHEMA
    )
    data: bytes = Field(description="the file")


class Healthy(Answer):
    status: Literal["healthy"] = "healthy"


class ServiceStatus(Answer):
    status: Literal["healthy"] = "healthy"
    authenticated: bool = Field(description="whether the device is logged in upstream")
    model_cache_dir: str | None


def _absent_by_default(schema: JsonDict) -> None:
    """The field is left out, not null: its default is no JSON value."""
    del schema["default"]


def _required_mode_only(description: str) -> Any:
    return Field(
        None, description=f"`required` mode: {description}", json_schema_extra=_absent_by_default
    )


class LoggedIn(Answer):
    """In ``required`` mode the caller's token pair comes with it; in
    ``compat`` mode those fields are absent."""

    status: Literal["ok"] = "ok"
    access_token: str | SkipJsonSchema[None] = _required_mode_only("an access token")
    refresh_token: str | SkipJsonSchema[None] = _required_mode_only("its refresh token")
    expires_in: int | SkipJsonSchema[None] = _required_mode_only("the access token's lifetime, s")
    role: str | SkipJsonSchema[None] = _required_mode_only("the caller's role")

    def response(self, status: int = 200) -> web.Response:
        return web.json_response(
            self.model_dump(mode="json", by_alias=True, exclude_none=True), status=status
        )


class Uploaded(Answer):
    status: Literal["ok"] = "ok"
    filename: str
    folder: str
    size: int = Field(description="plaintext bytes")


class UnlockStarted(Answer):
    state: UnlockState
