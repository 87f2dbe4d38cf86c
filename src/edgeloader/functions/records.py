"""What the registry and the run history hold, and their JSON (DESIGN §8).

Times are epoch seconds, as in the audit. Env values never leave the box
through these records: a function record names the env keys only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from edgeloader.functions.spec import FunctionSpec


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


@dataclass(frozen=True)
class FunctionRecord:
    name: str
    version: int
    spec: FunctionSpec
    image_id: str
    created_at: float
    updated_at: float

    def as_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "version": self.version,
            "image": spec.image,
            "imageId": self.image_id,
            "command": list(spec.command) if spec.command else None,
            "envKeys": sorted(spec.env),
            "limits": spec.limits.as_json(),
            "concurrency": spec.concurrency,
            "queue": spec.queue,
            "user": spec.user,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True)
class RunRecord:
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
    result: Any = None
    truncated: bool = False  # captured stdout or stderr was cut

    def as_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "function": self.function,
            "version": self.version,
            "image": self.image,
            "status": self.status.value,
            "exitCode": self.exit_code,
            "error": self.error,
            "queuedAt": self.queued_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "durationMs": self.duration_ms,
            "result": self.result,
        }


@dataclass(frozen=True)
class Outcome:
    """How a run ended, before it is written to the history."""

    status: RunStatus
    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    truncated: bool = False


@dataclass(frozen=True)
class Stats:
    runs: int
    succeeded: int
    failed: int
    timeouts: int
    oom: int
    p50_ms: int | None
    p95_ms: int | None
    last_run_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timeouts": self.timeouts,
            "oom": self.oom,
            "p50Ms": self.p50_ms,
            "p95Ms": self.p95_ms,
            "lastRunAt": self.last_run_at,
        }
