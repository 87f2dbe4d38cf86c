"""Functions: deploy, build, invoke, and the history of runs (docs/functions.md).

The service owns the rules and knows nothing of HTTP. Runs are tasks of the
service, not of a request: an invocation whose caller goes away runs on and
is recorded. On start-up, runs that a dead process left queued or running
become ``failed`` (``interrupted``); the housekeeping then removes their
containers (found by label) and, later, run folders past the retention
period (the records stay).

Each run's state changes are published on the event bus (``run`` events),
and what it prints as it prints it (``run-output``, functions/live.py),
its end and the queue's depth go to the metrics, and its log lines carry
its run id (``logs.RUN_ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgeloader import logs
from edgeloader.auth.audit import Auditor
from edgeloader.config import Settings
from edgeloader.errors import (
    BuildFailed,
    Conflict,
    EdgeloaderError,
    NotFound,
    ValidationFailed,
)
from edgeloader.events import EventBus, run_event
from edgeloader.functions import build as builds
from edgeloader.functions.folders import CONTAINER_DIR, RUN_ID, RunFolders
from edgeloader.functions.live import OutputFeed
from edgeloader.functions.models import ModelSource, ModelStore
from edgeloader.functions.probe import MountProbe
from edgeloader.functions.records import (
    INTERRUPTED,
    FunctionRecord,
    Outcome,
    RunOutput,
    RunRecord,
    RunStats,
    RunStatus,
)
from edgeloader.functions.runner import LABEL_FUNCTION, LABEL_RUN, Runner
from edgeloader.functions.scheduler import Scheduler, Ticket
from edgeloader.functions.spec import FunctionSpec, function_name, parse_spec
from edgeloader.functions.store import Registry, RunHistory, open_database
from edgeloader.functions.warm import WarmPool
from edgeloader.storage.state_dir import ensure_private_dir
from edgeloader.upstream.engine import Engine

log = logging.getLogger(__name__)

MAX_RUNS_LIMIT = 1000
HOUSEKEEPING_SECONDS = 60.0
WARM_REAP_SECONDS = 1.0
BUILT_IMAGE = "localhost/edgeloader-fn-{name}:{version}"


@dataclass(frozen=True)
class Caller:
    """Who asks, for the audit."""

    subject: str
    role: str
    route: str


class FunctionService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        auditor: Auditor,
        models: ModelSource,
        events: EventBus | None = None,
    ) -> None:
        self.events = events
        self.settings = settings.functions
        self.chunk_size = settings.chunk_size
        self.dir = settings.functions_dir
        self.engine = engine
        self.auditor = auditor
        self.metrics = auditor.metrics
        self.folders = RunFolders(self.dir)
        self.probe = MountProbe(engine, self.dir / "probe", CONTAINER_DIR)
        self.runner = Runner(engine, self.folders, self.probe, self.settings.output_max)
        self.models = ModelStore(
            self.dir / "models", self.settings.model_memory_max, models, self.metrics
        )
        self.warm = WarmPool(
            self.runner, self.models, self.settings.output_max, self.settings.warm_max
        )
        self.scheduler = Scheduler(self.settings.max_runs)
        self._db = open_database(self.dir)
        self.registry = Registry(self._db)
        self.history = RunHistory(self._db)
        self._runs: dict[str, asyncio.Task[RunRecord]] = {}
        # One change at a time per function name (a build holds it throughout).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._housekeeping: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    # Life cycle

    async def start(self) -> None:
        await asyncio.to_thread(self.folders.open)
        try:
            await asyncio.to_thread(self.models.open)
        except OSError as exc:
            # Functions without models still run; those with models fail clearly.
            log.warning("the model store cannot be mounted: %s", exc)
        # No build runs yet: contexts staged before a crash are leftovers.
        await asyncio.to_thread(shutil.rmtree, self.dir / "builds", True)
        interrupted = await asyncio.to_thread(self.history.interrupt_unfinished, time.time())
        if interrupted:
            log.warning("%d runs were interrupted by a restart", len(interrupted))
        self._housekeeping = asyncio.create_task(self._housekeep(), name="functions-housekeeping")
        self._reaper = asyncio.create_task(self._reap_warm(), name="warm-reaper")

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [*self._runs.values()]
        if self._housekeeping is not None:
            tasks.append(self._housekeeping)
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        # Each run removes its container and records itself as interrupted.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.warm.close()
        await asyncio.to_thread(self.models.close)
        self._db.close()

    # Functions

    async def deploy(self, body: Mapping[str, Any], caller: Caller) -> FunctionRecord:
        async with self._audited(caller, "function.deploy", body.get("name")) as notes:
            if "name" not in body:
                raise ValidationFailed("field 'name' is required")
            name = function_name(body["name"])
            spec = self._spec({k: v for k, v in body.items() if k != "name"})
            async with self._lock(name):
                image_id = await self._image_id(spec.image)
                record = await asyncio.to_thread(
                    self.registry.create, name, spec, image_id, time.time()
                )
            notes.append(f"version {record.version}")
            return record

    async def update(self, name: str, body: Mapping[str, Any], caller: Caller) -> FunctionRecord:
        async with self._audited(caller, "function.update", name) as notes:
            name = function_name(name)
            spec = self._spec(body)
            async with self._lock(name):
                await self.get(name)
                image_id = await self._image_id(spec.image)
                record = await asyncio.to_thread(
                    self.registry.add_version, name, spec, image_id, time.time()
                )
            await self.warm.drain(name)  # its warm containers serve the old version
            notes.append(f"version {record.version}")
            return record

    def staged_context(self) -> contextlib.AbstractAsyncContextManager[builds.StagedContext]:
        """Where an uploaded build context waits; removed on leaving."""
        return builds.staged_context(self.dir / "builds", self.settings.build_context_max)

    async def build(
        self,
        name: str,
        context: builds.StagedContext,
        spec_body: Mapping[str, Any] | None,
        caller: Caller,
    ) -> tuple[FunctionRecord, bool]:
        """Builds ``localhost/edgeloader-fn-NAME:VERSION`` and deploys it;
        True if the function is new."""
        async with self._audited(caller, "function.build", name) as notes:
            name = function_name(name)
            spec = self._spec(spec_body or {}, with_image=False)
            if context.size == 0:
                raise ValidationFailed("multipart field 'context' (a tar archive) is required")
            dockerfile = await asyncio.to_thread(context.dockerfile)
            for base in builds.check_dockerfile(dockerfile):
                try:
                    await self.engine.inspect_image(base)
                except NotFound:
                    raise ValidationFailed(
                        f"base image {base} is not in the engine: builds use local images only"
                    ) from None
            async with self._lock(name):
                version = await asyncio.to_thread(self.registry.next_version, name)
                tag = BUILT_IMAGE.format(name=name, version=version)
                try:
                    async with asyncio.timeout(self.settings.build_timeout):
                        await self.engine.build_image(
                            context.chunks(self.chunk_size), tag, {LABEL_FUNCTION: name}
                        )
                except TimeoutError:
                    raise BuildFailed(
                        f"image build did not finish within {self.settings.build_timeout:g} s"
                    ) from None
                spec = spec.model_copy(update={"image": tag})
                image_id = await self._image_id(tag)
                now = time.time()
                if version == 1:
                    record = await asyncio.to_thread(
                        self.registry.create, name, spec, image_id, now
                    )
                else:
                    record = await asyncio.to_thread(
                        self.registry.add_version, name, spec, image_id, now
                    )
                    await self.warm.drain(name)
            notes.append(f"built {tag}")
            return record, version == 1

    async def get(self, name: str) -> FunctionRecord:
        name = function_name(name)
        record = await asyncio.to_thread(self.registry.get, name)
        if record is None:
            raise NotFound(f"no function {name}")
        return record

    async def all(self) -> list[FunctionRecord]:
        return await asyncio.to_thread(self.registry.all)

    async def delete(self, name: str, caller: Caller) -> None:
        """Deletes the function; its runs' records stay, and runs already
        admitted finish."""
        async with self._audited(caller, "function.delete", name):
            name = function_name(name)
            async with self._lock(name):
                if not await asyncio.to_thread(self.registry.delete, name):
                    raise NotFound(f"no function {name}")
            await self.warm.drain(name)
            self.scheduler.forget(name)

    # Runs

    async def invoke(self, name: str, body: bytes, caller: Caller, *, wait: bool) -> RunRecord:
        """Admits a run; with ``wait``, returns its record once it has ended
        (whatever its status), else at once (queued)."""
        try:
            name = function_name(name)
            request = _request_json(body)
            function = await self.get(name)
            spec = function.spec
            await self.probe.check()  # refused now, not as a failed run
            ticket = self.scheduler.admit(name, spec.runs_at_once, spec.queue)
            self._queue_depth(name)
        except EdgeloaderError as exc:
            await self._audit(caller, "function.invoke", name, f"error {exc.status}: {exc.detail}")
            raise
        run = RunRecord(
            run_id=uuid.uuid4().hex,
            function=name,
            version=function.version,
            image=spec.image,
            status=RunStatus.QUEUED,
            queued_at=time.time(),
            invoker=caller.subject,
        )
        try:
            await asyncio.to_thread(self.history.add, run)
        except BaseException:
            ticket.close()
            self._queue_depth(name)
            raise
        self._published(run)
        task = asyncio.create_task(self._execute(run, function, request, ticket, caller))
        self._runs[run.run_id] = task
        task.add_done_callback(functools.partial(self._ended, run.run_id))
        if not wait:
            return run
        # Shielded: a caller that goes away does not cancel the run.
        return await asyncio.shield(task)

    async def _execute(
        self,
        run: RunRecord,
        function: FunctionRecord,
        request: bytes,
        ticket: Ticket,
        caller: Caller,
    ) -> RunRecord:
        logs.RUN_ID.set(run.run_id)  # this task's own context
        feed = self._feed(run)
        sink = feed.write if feed is not None else None
        try:
            async with ticket.slot():
                started = time.time()
                await asyncio.to_thread(self.history.started, run.run_id, started)
                self._queue_depth(run.function)
                self._published(
                    run.model_copy(update={"status": RunStatus.RUNNING, "started_at": started})
                )
                async with self.models.mounted(function.spec.models) as models:
                    if function.spec.warm is not None:
                        outcome = await self.warm.run(run.run_id, function, request, models, sink)
                    else:
                        outcome = await self.runner.run(run.run_id, function, request, models, sink)
                outcome = replace(outcome, models=[m.identity for m in models])
        except asyncio.CancelledError:
            if feed is not None:
                feed.discard()
            await self._finish(run, Outcome(RunStatus.FAILED, error=INTERRUPTED), caller)
            raise
        except EdgeloaderError as exc:
            log.warning("run %s of %s failed: %s", run.run_id, run.function, exc.detail)
            outcome = Outcome(RunStatus.FAILED, error=exc.detail)
        except Exception as exc:
            log.exception("run %s of %s failed unexpectedly", run.run_id, run.function)
            outcome = Outcome(RunStatus.FAILED, error=f"internal error: {exc}")
        finally:
            ticket.close()
            self._queue_depth(run.function)
        if feed is not None:
            try:
                await feed.close()  # the output goes out before the run's end
            except asyncio.CancelledError:  # the service stops: the run ended all the same
                await self._finish(run, outcome, caller)
                raise
        return await self._finish(run, outcome, caller)

    def _ended(self, run_id: str, task: asyncio.Task[RunRecord]) -> None:
        self._runs.pop(run_id, None)
        # Nobody may be waiting for the task (async runs, callers gone).
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s failed", run_id, exc_info=task.exception())

    async def _finish(self, run: RunRecord, outcome: Outcome, caller: Caller) -> RunRecord:
        record = await asyncio.to_thread(self.history.finish, run.run_id, outcome, time.time())
        seconds = record.duration_ms / 1000 if record.duration_ms is not None else None
        self.metrics.function_run(
            record.function,
            record.status.value,
            seconds,
            cpu_seconds=None if record.cpu_ms is None else record.cpu_ms / 1000,
            memory_peak=None
            if record.memory_peak_mb is None
            else round(record.memory_peak_mb * (1 << 20)),
            cold_start=record.cold_start and record.started_at is not None,
        )
        self._published(record)
        took = f"{record.duration_ms} ms" if record.duration_ms is not None else "never started"
        detail = f"run {run.run_id}, version {run.version}, {took}"
        if record.models:
            detail += f", models {' '.join(record.models)}"
        await self._audit(caller, "function.invoke", run.function, record.status.value, detail)
        return record

    async def run(self, run_id: str) -> RunRecord:
        record = None
        if RUN_ID.fullmatch(run_id):
            record = await asyncio.to_thread(self.history.get, run_id)
        if record is None:
            raise NotFound(f"no run {run_id}")
        return record

    async def runs(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Newest first."""
        try:
            wanted = RunStatus(status) if status is not None else None
        except ValueError:
            raise ValidationFailed(f"status must be one of {', '.join(RunStatus)}") from None
        _check_page(limit, offset)
        return await asyncio.to_thread(
            lambda: self.history.find(
                function=function, status=wanted, since=since, limit=limit, offset=offset
            )
        )

    async def executions(self, name: str, limit: int, offset: int) -> tuple[list[RunRecord], int]:
        """A function's runs, newest first, and how many it has in all."""
        name = function_name(name)
        runs = await self.runs(function=name, limit=limit, offset=offset)
        total = await asyncio.to_thread(lambda: self.history.count(function=name))
        return runs, total

    async def output(self, run_id: str) -> RunOutput:
        record = await self.run(run_id)
        if not record.status.final:
            raise Conflict(f"run {run_id} is {record.status.value}: its output comes at its end")
        saved = await asyncio.to_thread(self.history.output, run_id)
        if saved is None:
            raise NotFound(f"run {run_id} has no output: its container never ran")
        stdout, stderr, logs = saved
        return RunOutput(
            stdout=_text(stdout), stderr=_text(stderr), logs=logs, truncated=record.truncated
        )

    async def stats(self, name: str) -> RunStats:
        function = await self.get(name)
        return await asyncio.to_thread(self.history.stats, function.name)

    # Housekeeping

    async def _housekeep(self) -> None:
        last_error = ""
        while True:
            try:
                await self.remove_stray_containers()
                await self.warm.remove_strays()
                await self.remove_stray_cgroups()
                await self.prune_records()
                last_error = ""
            except EdgeloaderError as exc:
                # Once per new problem: a box without an engine stays quiet.
                level = logging.DEBUG if exc.detail == last_error else logging.WARNING
                log.log(level, "functions housekeeping: %s", exc.detail)
                last_error = exc.detail
            except Exception:
                log.exception("functions housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    async def _reap_warm(self) -> None:
        """Idle warm containers go ``idleS`` after their last invoke."""
        while True:
            await asyncio.sleep(WARM_REAP_SECONDS)
            try:
                await self.warm.reap()
            except EdgeloaderError as exc:
                log.warning("removing idle warm containers: %s", exc.detail)

    async def remove_stray_containers(self) -> int:
        """Removes the containers of this service's runs that are not running
        now (left by a crash or a failed removal). Containers of another
        loader's runs on the same engine are not this service's to touch."""
        labelled = await self.engine.labelled_containers(LABEL_RUN)
        ours = await asyncio.to_thread(self.history.known, labelled.values())
        ended = ours - set(self._runs)
        stray = [cid for cid, run_id in labelled.items() if run_id in ended]
        for container_id in stray:
            await self.engine.remove_container(container_id)
            log.info("removed the container %s of an ended run", container_id)
        return len(stray)

    async def remove_stray_cgroups(self) -> None:
        """Parent cgroups of runs that are not running (a crash left them)."""
        cgroups = await self.runner.cgroups()
        running = set(self._runs) | self.warm.keys()
        for run_id in await asyncio.to_thread(cgroups.leftovers):
            if run_id not in running:
                await asyncio.to_thread(cgroups.remove, run_id)

    async def prune_records(self, now: float | None = None) -> int:
        """Drops the records of ended runs past the retention period, then
        the oldest beyond the count and the bytes kept (docs/functions.md)."""
        s = self.settings
        before = (now or time.time()) - s.run_retention
        pruned = await asyncio.to_thread(
            self.history.prune, before, s.run_records_max, s.run_kept_bytes_max
        )
        if pruned:
            log.info("dropped the records of %d ended runs", pruned)
        return pruned

    # Helpers

    def _published(self, run: RunRecord) -> None:
        if self.events is not None:
            self.events.publish(run_event(run.wire()))

    def _feed(self, run: RunRecord) -> OutputFeed | None:
        """The run's live output, as ``run-output`` events."""
        if self.events is None:
            return None
        return OutputFeed(self.events.publish, run.run_id, run.function, run.invoker)

    def _queue_depth(self, name: str) -> None:
        self.metrics.function_waiting(name, self.scheduler.waiting(name))

    def _spec(self, body: Mapping[str, Any], *, with_image: bool = True) -> FunctionSpec:
        return parse_spec(body, with_image=with_image)

    async def _image_id(self, ref: str) -> str:
        info = await self.engine.inspect_image(ref)
        return str(info.get("Id") or "")

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def _audited(
        self, caller: Caller, action: str, resource: object
    ) -> AsyncIterator[list[str]]:
        """Audits the block: who, which function, the outcome, the duration."""
        notes: list[str] = []
        started = time.monotonic()
        outcome = "ok"
        try:
            yield notes
        except EdgeloaderError as exc:
            outcome = f"error {exc.status}: {exc.detail}"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            notes.append(f"{round((time.monotonic() - started) * 1000)} ms")
            await self._audit(caller, action, resource, outcome, ", ".join(notes))

    async def _audit(
        self, caller: Caller, action: str, resource: object, outcome: str, detail: str = ""
    ) -> None:
        await self.auditor.record(
            subject=caller.subject,
            role=caller.role,
            action=action,
            route=caller.route,
            resource=str(resource)[:100] if resource is not None else "",
            outcome=outcome,
            detail=detail,
        )


@contextlib.asynccontextmanager
async def open_functions(
    settings: Settings,
    engine: Engine,
    auditor: Auditor,
    models: ModelSource,
    events: EventBus | None = None,
) -> AsyncIterator[FunctionService]:
    await asyncio.to_thread(ensure_private_dir, settings.functions_dir)
    service = await asyncio.to_thread(FunctionService, settings, engine, auditor, models, events)
    try:
        await service.start()
        yield service
    finally:
        await service.close()


def _request_json(body: bytes) -> bytes:
    """The invoke body as ``request.json``: any JSON, ``{}`` when empty."""
    if not body.strip():
        return b"{}"
    try:
        json.loads(body)
    except ValueError:
        raise ValidationFailed("the invoke body must be JSON") from None
    except RecursionError:
        raise ValidationFailed("the invoke body is nested too deeply") from None
    return body


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_RUNS_LIMIT:
        raise ValidationFailed(f"limit must be 1-{MAX_RUNS_LIMIT}")
    if offset < 0:
        raise ValidationFailed("offset must be 0 or more")


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
