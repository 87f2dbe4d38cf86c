"""Body and answer of the pre-staging routes (docs/api.md, "Pre-staging")."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edgeloader.services.prefetch import DONE, FAILED, RUNNING, VERIFYING, WAITING
from edgeloader.web.models.azaion import FOLDER_SCHEMA, NAME_SCHEMA
from edgeloader.web.models.base import Answer, OneOf, RequestBody


class PrefetchBody(RequestBody):
    name: str = Field(min_length=1, json_schema_extra=NAME_SCHEMA)
    folder: str | None = Field(
        None, description="default `models`", json_schema_extra=FOLDER_SCHEMA
    )


class PrefetchState(Answer):
    """The job's state."""

    folder: str
    name: str
    state: Annotated[str, OneOf((WAITING, RUNNING, VERIFYING, DONE, FAILED))]
    bytes_done: int = Field(description="ciphertext bytes in hand, small and big parts")
    bytes_total: int = Field(description="0 until the CDN has given the size")
    error: str | None = Field(description="why it waits or failed")
