"""The body of the pre-staging routes (docs/api.md, "Pre-staging"); they
answer with ``services.prefetch.PrefetchStatus``."""

from __future__ import annotations

from pydantic import Field

from edgeloader.web.models.azaion import FOLDER_SCHEMA, NAME_SCHEMA
from edgeloader.web.models.base import RequestBody


class PrefetchBody(RequestBody):
    name: str = Field(min_length=1, json_schema_extra=NAME_SCHEMA)
    folder: str | None = Field(
        None, description="default `models`", json_schema_extra=FOLDER_SCHEMA
    )
