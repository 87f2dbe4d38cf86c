"""What the registry and the run history hold; each model is also the JSON
of its route (docs/functions.md, "Routes").

Times are epoch seconds, as in the audit. Env values never leave the box
through these records: a function record names the env keys only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field, computed_field

from edgeloader.functions.spec import FunctionSpec, Limits, ModelBinding, Warm
from edgeloader.wire import Record

__all__ = [
    "INTERRUPTED",
    "FunctionRecord",
    "Outcome",
    "RunOutput",
    "RunRecord",
    "RunStats",
    "RunStatus",
]


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OOM = "oom"

    @property
    def final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


INTERRUPTED = "interrupted"


class _Frozen(Record):
    model_config = ConfigDict(frozen=True)


class FunctionRecord(_Frozen):
    """A function's current version."""

    name: str
    version: int
    spec: FunctionSpec = Field(exclude=True)
    image_id: str
    created_at: float
    updated_at: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def image(self) -> str:
        return self.spec.image

    @computed_field  # type: ignore[prop-decorator]
    @property
    def command(self) -> list[str] | None:
        return self.spec.command

    @computed_field(description="the env's names; values are never returned")  # type: ignore[prop-decorator]
    @property
    def env_keys(self) -> list[str]:
        return sorted(self.spec.env)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def limits(self) -> Limits:
        return self.spec.limits

    @computed_field  # type: ignore[prop-decorator]
    @property
    def concurrency(self) -> int:
        return self.spec.concurrency

    @computed_field  # type: ignore[prop-decorator]
    @property
    def queue(self) -> int:
        return self.spec.queue

    @computed_field  # type: ignore[prop-decorator]
    @property
    def user(self) -> int:
        return self.spec.user

    @computed_field(description="models each run finds at /models/FOLDER/NAME")  # type: ignore[prop-decorator]
    @property
    def models(self) -> list[ModelBinding]:
        return self.spec.models

    @computed_field(description="null: every run is a fresh container")  # type: ignore[prop-decorator]
    @property
    def warm(self) -> Warm | None:
        return self.spec.warm


class RunRecord(_Frozen):
    """One run, from its admission to its end."""

    run_id: str
    function: str
    version: int
    image: str
    status: RunStatus
    queued_at: float
    exit_code: int | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: int | None = None
    result: Any = Field(None, description="the run's result.json, parsed, or null")
    invoker: str = Field("", description="the identity that invoked the run")
    models: list[str] = Field(
        default_factory=list, description="the identities of the models the run mounted"
    )
    cold_start: bool = Field(True, description="the run started its container")
    cpu_ms: int | None = Field(None, description="CPU time the run used; null if unknown")
    memory_peak_mb: float | None = Field(
        None, description="the run's peak memory, MiB; null if unknown"
    )
    # Whether captured stdout or stderr was cut: told by the output route.
    truncated: bool = Field(False, exclude=True)


class RunOutput(_Frozen):
    """A run's captured output and its ``logs.json``."""

    stdout: str
    stderr: str
    logs: Any = Field(description="the run's logs.json, parsed, or null")
    truncated: bool


class RunStats(_Frozen):
    """A function's runs, counted by status, and their durations."""

    runs: int
    succeeded: int
    failed: int
    timeouts: int
    oom: int
    p50_ms: int | None
    p95_ms: int | None
    last_run_at: float | None
    cpu_ms_p50: int | None
    cpu_ms_p95: int | None
    memory_peak_mb_max: float | None
    cold_starts: int


@dataclass(frozen=True)
class Outcome:
    """How a run ended, before it is written to the history: what it left
    (capped) is kept with its record."""

    status: RunStatus
    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    truncated: bool = False  # stdout or stderr was cut at the cap
    stdout: bytes = b""
    stderr: bytes = b""
    logs: Any = None  # the parsed logs.json
    started: bool = False  # a container ran: there is output to keep
    cpu_ms: int | None = None
    memory_peak_mb: float | None = None
    models: list[str] = field(default_factory=list)  # identities of the models mounted
    cold_start: bool = True  # the run started its container
