"""Bodies and answers of the function routes (docs/functions.md).

The fields of a function are checked by ``edgeloader.functions.spec``,
inside the service, so that a refused deploy is audited like any other;
the models here describe the same rules for the document, and
tests/unit/test_openapi_models.py holds the two to the same verdicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema
from pydantic.config import JsonDict, JsonValue

from edgeloader.functions.records import RunStatus
from edgeloader.functions.spec import (
    ENV_NAME,
    IMAGE,
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_STRING,
    NAME,
    RESERVED_ENV,
)
from edgeloader.web.models.base import Answer, OneOf, Query, StrictBody

#: A function's name; ``function_name`` refuses others with 400.
NAME_SCHEMA: JsonDict = {
    "pattern": f"^{NAME.pattern}$",
    "description": "becomes part of an image name; else 400",
}
MAX_OFFSET = 2**31 - 1
_TEXT: JsonDict = {"pattern": "^[^\\x00]*$"}
_ENV_SCHEMA: JsonDict = {
    "type": "object",
    "maxProperties": MAX_ENV_ITEMS,
    "propertyNames": {
        "pattern": f"^{ENV_NAME.pattern}$",
        "maxLength": MAX_STRING,
        "not": {"enum": list[JsonValue](sorted(RESERVED_ENV))},
    },
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_STRING,
        "pattern": "^[^\\x00\\r\\n]*$",
    },
}


class Limits(StrictBody):
    memory_mb: int = Field(128, ge=16, le=4096, description="no swap is added")
    cpus: float = Field(0.5, ge=0.05, allow_inf_nan=False, description="at most the box's cores")
    pids: int = Field(64, ge=8, le=4096)
    timeout_s: int = Field(30, ge=1, le=3600)
    tmpfs_mb: int = Field(16, ge=1, le=1024, description="`/tmp` and `/dev/shm`")


class FunctionSettings(StrictBody):
    """A function's settings but its name and image: a build's ``spec``."""

    command: list[Annotated[str, Field(max_length=MAX_STRING, json_schema_extra=_TEXT)]] | None = (
        Field(None, min_length=1, max_length=MAX_COMMAND_ITEMS, description="the image's own")
    )
    env: Annotated[dict[str, str], WithJsonSchema(_ENV_SCHEMA)] | None = Field(
        None,
        description="never returned; EDGELOADER_RUN_ID and EDGELOADER_FUNCTION are the loader's",
    )
    limits: Limits | None = None
    concurrency: int = Field(1, ge=1, le=16, description="runs at once")
    queue: int = Field(8, ge=0, le=256, description="more that may wait")
    user: int = Field(65534, ge=1, le=65535, description="uid and gid, never 0")


class FunctionUpdate(FunctionSettings):
    image: str = Field(pattern=f"^{IMAGE.pattern}$", description="an image in the engine")


class FunctionDeploy(FunctionUpdate):
    name: str = Field(json_schema_extra=NAME_SCHEMA)


class BuildForm(StrictBody):
    """``multipart/form-data``."""

    context: bytes = Field(description="a tar archive with a Dockerfile at its root")
    spec: FunctionSettings | None = Field(None, description="JSON")


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


class LimitsRecord(Answer):
    memory_mb: int
    cpus: float
    pids: int
    timeout_s: int
    tmpfs_mb: int


class FunctionRecord(Answer):
    name: str
    version: int
    image: str
    image_id: str
    command: list[str] | None
    env_keys: list[str] = Field(description="the env's names; values are never returned")
    limits: LimitsRecord
    concurrency: int
    queue: int
    user: int
    created_at: float
    updated_at: float


class FunctionRecords(Answer):
    functions: list[FunctionRecord]


class RunRecord(Answer):
    run_id: str
    function: str
    version: int
    image: str
    status: RunStatus
    exit_code: int | None
    error: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    duration_ms: int | None
    result: Any = Field(description="the run's result.json, parsed, or null")


class RunRecords(Answer):
    runs: list[RunRecord]


class Executions(Answer):
    executions: list[RunRecord]
    total: int


class RunAccepted(Answer):
    run_id: str


class RunOutput(Answer):
    stdout: str
    stderr: str
    logs: Any = Field(description="the run's logs.json, parsed, or null")
    truncated: bool


class RunStats(Answer):
    runs: int
    succeeded: int
    failed: int
    timeouts: int
    oom: int
    p50_ms: int | None
    p95_ms: int | None
    last_run_at: float | None


class Deleted(Answer):
    status: Literal["deleted"] = "deleted"
