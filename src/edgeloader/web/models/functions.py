"""Bodies, queries and lists of the function routes (docs/functions.md).

A function's fields and records are declared once, in
``edgeloader.functions.spec`` and ``edgeloader.functions.records``; the
service validates bodies with them (so that a refused deploy is audited)
and the routes answer with them. What is here only wraps them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edgeloader.functions.records import FunctionRecord, RunRecord, RunStatus
from edgeloader.functions.spec import NAME_SCHEMA, FunctionOptions, FunctionSpec
from edgeloader.web.models.base import Answer, Query, StrictBody
from edgeloader.wire import OneOf

MAX_OFFSET = 2**31 - 1


class FunctionDeploy(FunctionSpec):
    """A new function: its name and its first version."""

    name: str = Field(json_schema_extra=NAME_SCHEMA)


class BuildForm(StrictBody):
    """``multipart/form-data``."""

    context: bytes = Field(description="a tar archive with a Dockerfile at its root")
    spec: FunctionOptions | None = Field(None, description="JSON")


class InvokeQuery(Query):
    asynchronous: bool = Field(
        False, alias="async", description="answer 202 at once instead of the ended run"
    )


class RunsQuery(Query):
    function: str | None = Field(None, json_schema_extra=NAME_SCHEMA)
    status: Annotated[str, OneOf(tuple(RunStatus))] | None = None
    since: float | None = Field(None, allow_inf_nan=False, description="epoch seconds")
    limit: int = Field(100, ge=1, le=1000)


class ExecutionsQuery(Query):
    limit: int = Field(20, ge=1, le=1000)
    # Bounded: the history is SQLite, whose integers end at 2^63.
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class FunctionRecords(Answer):
    functions: list[FunctionRecord]


class RunRecords(Answer):
    runs: list[RunRecord]


class Executions(Answer):
    executions: list[RunRecord]
    total: int


class RunAccepted(Answer):
    run_id: str


class Deleted(Answer):
    status: Literal["deleted"] = "deleted"
