"""The functions database: the registry of functions with their versions,
and the history of runs. One SQLite file under the functions folder,
opened with the one helper (``storage/sqlite.py``).

The methods are blocking and thread-safe; async code calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgeloader.errors import Conflict, NotFound
from edgeloader.functions.records import (
    INTERRUPTED,
    FunctionRecord,
    Outcome,
    RunRecord,
    RunStats,
    RunStatus,
)
from edgeloader.functions.spec import FunctionSpec
from edgeloader.storage.sqlite import Database

DB_FILE = "functions.sqlite3"

# Each entry is one schema migration (storage/sqlite.py); append, never edit.
_MIGRATIONS = (
    """
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE function_versions (
    name TEXT NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    image TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    duration_ms INTEGER,
    result TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    folder_removed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_time ON runs (queued_at);
CREATE INDEX runs_by_function ON runs (function, queued_at);
CREATE INDEX runs_by_duration ON runs (function, duration_ms);
CREATE INDEX runs_by_status ON runs (status);
""",
    # What a run leaves is kept with its record, capped, instead of in its
    # folder: the folder goes when the run ends.
    """
CREATE TABLE run_output (
    id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    stdout BLOB NOT NULL,
    stderr BLOB NOT NULL,
    logs TEXT
);
ALTER TABLE runs ADD COLUMN kept_bytes INTEGER NOT NULL DEFAULT 0;
""",
    # Who invoked, with which models, and what the run used.
    """
ALTER TABLE runs ADD COLUMN invoker TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runs ADD COLUMN cold_start INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN cpu_ms INTEGER;
ALTER TABLE runs ADD COLUMN memory_peak_mb REAL;
CREATE INDEX runs_by_cpu ON runs (function, cpu_ms);
""",
)

_RUN_COLUMNS = (
    "id, function, version, image, status, exit_code, error, queued_at, "
    "started_at, finished_at, duration_ms, result, truncated, "
    "invoker, models, cold_start, cpu_ms, memory_peak_mb"
)
_FUNCTION_SELECT = (
    "SELECT f.name, f.version, v.spec, v.image_id, f.created_at, f.updated_at"
    " FROM functions f JOIN function_versions v ON v.name = f.name AND v.version = f.version "
)
_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def open_database(folder: Path) -> Database:
    return Database(folder / DB_FILE, _MIGRATIONS)


class Registry:
    """Functions and their versions; a version, once written, never changes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, spec: FunctionSpec, image_id: str, now: float) -> FunctionRecord:
        with self._db.transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"function {name} already exists")
            db.execute("INSERT INTO functions VALUES (?, 1, ?, ?)", (name, now, now))
            self._add_version(db, name, 1, spec, image_id, now)
        return FunctionRecord(
            name=name, version=1, spec=spec, image_id=image_id, created_at=now, updated_at=now
        )

    def add_version(
        self, name: str, spec: FunctionSpec, image_id: str, now: float
    ) -> FunctionRecord:
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT version, created_at FROM functions WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no function {name}")
            version = int(row[0]) + 1
            db.execute(
                "UPDATE functions SET version = ?, updated_at = ? WHERE name = ?",
                (version, now, name),
            )
            self._add_version(db, name, version, spec, image_id, now)
        return FunctionRecord(
            name=name,
            version=version,
            spec=spec,
            image_id=image_id,
            created_at=float(row[1]),
            updated_at=now,
        )

    @staticmethod
    def _add_version(
        db: Any, name: str, version: int, spec: FunctionSpec, image_id: str, now: float
    ) -> None:
        db.execute(
            "INSERT INTO function_versions VALUES (?, ?, ?, ?, ?)",
            (name, version, _spec_json(spec), image_id, now),
        )

    def get(self, name: str) -> FunctionRecord | None:
        records = self._select("WHERE f.name = ?", (name,))
        return records[0] if records else None

    def all(self) -> list[FunctionRecord]:
        return self._select("ORDER BY f.name", ())

    def next_version(self, name: str) -> int:
        with self._db.reading() as db:
            row = db.execute("SELECT version FROM functions WHERE name = ?", (name,)).fetchone()
        return int(row[0]) + 1 if row else 1

    def delete(self, name: str) -> bool:
        with self._db.transaction() as db:
            return db.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount > 0

    def _select(self, where: str, args: Sequence[Any]) -> list[FunctionRecord]:
        with self._db.reading() as db:
            sql = _FUNCTION_SELECT + where  # fixed text, bound values
            rows = db.execute(sql, args).fetchall()
        return [
            FunctionRecord(
                name=name,
                version=version,
                spec=_spec_from(spec),
                image_id=image_id,
                created_at=created,
                updated_at=updated,
            )
            for name, version, spec, image_id, created, updated in rows
        ]


class RunHistory:
    """Every run's record, kept after its function and its folder are gone."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, run: RunRecord) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 18)})",  # noqa: S608
                _run_row(run),
            )

    def started(self, run_id: str, at: float) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, started_at = ? WHERE id = ?",
                (RunStatus.RUNNING.value, at, run_id),
            )

    def finish(self, run_id: str, outcome: Outcome, at: float) -> RunRecord:
        result = None if outcome.result is None else json.dumps(outcome.result)
        logs = None if outcome.logs is None else json.dumps(outcome.logs)
        kept = len(result or "") + len(logs or "") + len(outcome.stdout) + len(outcome.stderr)
        with self._db.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, error = ?, result = ?, truncated = ?,"
                " finished_at = ?, kept_bytes = ?, cpu_ms = ?, memory_peak_mb = ?, models = ?,"
                " cold_start = ?,"
                " duration_ms = CASE WHEN started_at IS NULL THEN NULL"
                " ELSE CAST(ROUND((? - started_at) * 1000) AS INTEGER) END"
                " WHERE id = ?",
                (
                    outcome.status.value,
                    outcome.exit_code,
                    outcome.error,
                    result,
                    int(outcome.truncated),
                    at,
                    kept,
                    outcome.cpu_ms,
                    outcome.memory_peak_mb,
                    json.dumps(outcome.models),
                    int(outcome.cold_start),
                    at,
                    run_id,
                ),
            )
            if outcome.started:
                db.execute(
                    "INSERT OR REPLACE INTO run_output (id, stdout, stderr, logs)"
                    " VALUES (?, ?, ?, ?)",
                    (run_id, outcome.stdout, outcome.stderr, logs),
                )
        run = self.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    def interrupt_unfinished(self, at: float) -> list[str]:
        """Runs a dead process left queued or running become failed (interrupted)."""
        with self._db.transaction() as db:
            ids = [
                str(row[0])
                for row in db.execute(
                    "SELECT id FROM runs WHERE status IN (?, ?)", _UNFINISHED
                ).fetchall()
            ]
            db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?,"
                " duration_ms = CASE WHEN started_at IS NULL THEN NULL"
                " ELSE CAST(ROUND((? - started_at) * 1000) AS INTEGER) END"
                " WHERE status IN (?, ?)",
                (RunStatus.FAILED.value, INTERRUPTED, at, at, *_UNFINISHED),
            )
        return ids

    def get(self, run_id: str) -> RunRecord | None:
        runs = self._select("WHERE id = ?", (run_id,))
        return runs[0] if runs else None

    def find(
        self,
        *,
        function: str | None = None,
        status: RunStatus | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Newest first."""
        where, args = _filters(function, status, since)
        return self._select(
            f"{where} ORDER BY queued_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )

    def count(self, *, function: str | None = None) -> int:
        where, args = _filters(function, None, None)
        with self._db.reading() as db:
            sql = f"SELECT COUNT(*) FROM runs {where}"  # noqa: S608 - fixed text, bound values
            return int(db.execute(sql, args).fetchone()[0])

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` that are runs of this database."""
        with self._db.reading() as db:
            return {
                run_id
                for run_id in run_ids
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
            }

    def stats(self, function: str) -> RunStats:
        with self._db.reading() as db:
            counts = dict(
                db.execute(
                    "SELECT status, COUNT(*) FROM runs WHERE function = ? GROUP BY status",
                    (function,),
                ).fetchall()
            )
            last = db.execute(
                "SELECT MAX(queued_at) FROM runs WHERE function = ?", (function,)
            ).fetchone()[0]
            timed = int(
                db.execute(
                    "SELECT COUNT(*) FROM runs WHERE function = ? AND duration_ms IS NOT NULL",
                    (function,),
                ).fetchone()[0]
            )
            p50, p95 = _percentiles(db, function, "duration_ms", timed)
            measured, peak, colds = db.execute(
                "SELECT COUNT(cpu_ms), MAX(memory_peak_mb), TOTAL(cold_start AND started_at"
                " IS NOT NULL) FROM runs WHERE function = ?",
                (function,),
            ).fetchone()
            cpu_p50, cpu_p95 = _percentiles(db, function, "cpu_ms", int(measured))
        return RunStats(
            runs=sum(counts.values()),
            succeeded=counts.get(RunStatus.SUCCEEDED.value, 0),
            failed=counts.get(RunStatus.FAILED.value, 0),
            timeouts=counts.get(RunStatus.TIMEOUT.value, 0),
            oom=counts.get(RunStatus.OOM.value, 0),
            p50_ms=p50,
            p95_ms=p95,
            last_run_at=last,
            cpu_ms_p50=cpu_p50,
            cpu_ms_p95=cpu_p95,
            memory_peak_mb_max=peak,
            cold_starts=int(colds),
        )

    def output(self, run_id: str) -> tuple[bytes, bytes, Any] | None:
        """A run's captured stdout and stderr and its parsed ``logs.json``;
        None if it never started (or its record is gone)."""
        with self._db.reading() as db:
            row = db.execute(
                "SELECT stdout, stderr, logs FROM run_output WHERE id = ?", (run_id,)
            ).fetchone()
        if row is None:
            return None
        stdout, stderr, logs = row
        return bytes(stdout), bytes(stderr), None if logs is None else json.loads(logs)

    def prune(self, before: float, max_records: int, max_bytes: int) -> int:
        """Drops the records (with their output) of ended runs older than
        ``before``, then the oldest beyond ``max_records`` or beyond
        ``max_bytes`` of kept output; returns how many went."""
        ended = "status NOT IN (?, ?)"
        with self._db.transaction() as db:
            old = db.execute(
                f"DELETE FROM runs WHERE {ended} AND finished_at < ?",  # noqa: S608
                (*_UNFINISHED, before),
            ).rowcount
            count, kept = db.execute("SELECT COUNT(*), TOTAL(kept_bytes) FROM runs").fetchone()
            excess = []
            for run_id, nbytes in db.execute(
                f"SELECT id, kept_bytes FROM runs WHERE {ended} ORDER BY queued_at",  # noqa: S608
                _UNFINISHED,
            ):
                if count <= max_records and kept <= max_bytes:
                    break
                excess.append((run_id,))
                count -= 1
                kept -= nbytes
            db.executemany("DELETE FROM runs WHERE id = ?", excess)
        return int(old) + len(excess)

    def _select(self, where: str, args: Sequence[Any]) -> list[RunRecord]:
        with self._db.reading() as db:
            sql = f"SELECT {_RUN_COLUMNS} FROM runs {where}"  # noqa: S608 - fixed text, bound values
            rows = db.execute(sql, args).fetchall()
        return [_run_from(row) for row in rows]


def _percentiles(
    db: sqlite3.Connection, function: str, column: str, count: int
) -> tuple[int | None, int | None]:
    """The nearest-rank p50 and p95 of ``column`` (a fixed name) over the
    function's ``count`` runs that have it, read from an index: no history
    in memory."""
    if not count:
        return None, None
    sql = (
        f"SELECT {column} FROM runs WHERE function = ? AND {column} IS NOT NULL"  # noqa: S608
        f" ORDER BY {column} LIMIT 1 OFFSET ?"
    )
    p50, p95 = (
        int(db.execute(sql, (function, percentile_offset(count, percent))).fetchone()[0])
        for percent in (50, 95)
    )
    return p50, p95


def percentile_offset(count: int, percent: int) -> int:
    """0-based position of the nearest-rank ``percent`` percentile among
    ``count`` sorted values."""
    if count < 1 or not 0 < percent <= 100:
        raise ValueError("a percentile needs values and a percent in (0, 100]")
    rank = -(-percent * count // 100)  # ceil(percent / 100 * count), exactly
    return rank - 1


def _filters(
    function: str | None, status: RunStatus | None, since: float | None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    args: list[Any] = []
    if function is not None:
        clauses.append("function = ?")
        args.append(function)
    if status is not None:
        clauses.append("status = ?")
        args.append(status.value)
    if since is not None:
        clauses.append("queued_at >= ?")
        args.append(since)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _spec_json(spec: FunctionSpec) -> str:
    # Env values are kept here, and only here: the record never shows them.
    return spec.model_dump_json(by_alias=True)


def _spec_from(stored: str) -> FunctionSpec:
    return FunctionSpec.model_validate_json(stored)


def _run_row(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.run_id,
        run.function,
        run.version,
        run.image,
        run.status.value,
        run.exit_code,
        run.error,
        run.queued_at,
        run.started_at,
        run.finished_at,
        run.duration_ms,
        None if run.result is None else json.dumps(run.result),
        int(run.truncated),
        run.invoker,
        json.dumps(run.models),
        int(run.cold_start),
        run.cpu_ms,
        run.memory_peak_mb,
    )


def _run_from(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        function=row[1],
        version=row[2],
        image=row[3],
        status=RunStatus(row[4]),
        exit_code=row[5],
        error=row[6],
        queued_at=row[7],
        started_at=row[8],
        finished_at=row[9],
        duration_ms=row[10],
        result=None if row[11] is None else json.loads(row[11]),
        truncated=bool(row[12]),
        invoker=row[13],
        models=json.loads(row[14]),
        cold_start=bool(row[15]),
        cpu_ms=row[16],
        memory_peak_mb=row[17],
    )
