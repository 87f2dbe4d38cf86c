"""One run: its folder, its container, and how it ended.

The run folder (a tmpfs of ``diskMb``) is mounted, the container created
with the isolation of :class:`ContainerSpec` (nothing in a function's spec
can weaken it), its output attached before it starts, and it is waited on
until ``timeoutS``; past it, it is killed and the run is ``timeout``. Then
its exit, its output (capped), ``result.json`` and ``logs.json`` are read,
and the container and the folder are removed whatever happened, also when
the run is cancelled. What the run left lives on in its record only.

What the run used (CPU time, peak memory) is read from its parent cgroup
(``usage.py``) once the container is gone.

OOM: the engine's ``OOMKilled`` decides where it is reported (Docker
Engine). Podman 4 never reports it (its monitor leaves the OOM note where
podman does not look), so there a run is ``oom`` when it ended with code
137 (SIGKILL, or ``exit 137``) that the loader did not cause *and* its
peak memory reached the limit; an ``exit 137`` with memory to spare is
``failed``. Without the peak (no cgroup figures), exit 137 alone decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edgeloader.errors import EdgeloaderError, ImageGone, NotFound
from edgeloader.functions.folders import CONTAINER_DIR, BadOutput, RunFolders
from edgeloader.functions.models import Mounted
from edgeloader.functions.output import CapturedOutput, OutputCapture, Sink
from edgeloader.functions.probe import MountProbe
from edgeloader.functions.records import FunctionRecord, Outcome, RunStatus
from edgeloader.functions.spec import MODELS_DIR
from edgeloader.functions.usage import RunCgroups, Usage
from edgeloader.upstream.engine import Bind, ContainerExit, ContainerSpec, Engine

log = logging.getLogger(__name__)

MiB = 1 << 20
LABEL_RUN = "edgeloader.run"
LABEL_FUNCTION = "edgeloader.function"
SIGKILLED = 128 + 9
# After a kill, how long the engine may take to report the stop.
_KILL_GRACE = 30.0
_ERROR_LINE = 200  # characters of stderr's last line quoted in an error
_OOM_SLACK = 1 << 20
_UNKNOWN = Usage(None, None)


@dataclass(frozen=True)
class Ending:
    """What the engine says about a finished container, and what it used."""

    exit: ContainerExit
    output: CapturedOutput
    timed_out: bool
    reports_oom: bool  # the engine's OOMKilled can be trusted
    usage: Usage = _UNKNOWN
    memory_limit: int = 0

    @property
    def oom(self) -> bool:
        if self.reports_oom or self.exit.oom_killed:
            return self.exit.oom_killed
        if self.exit.code != SIGKILLED:
            return False
        peak = self.usage.memory_peak
        # The kernel kills at the limit; a page or two of slack for rounding.
        return peak is None or peak >= self.memory_limit - _OOM_SLACK


class Runner:
    def __init__(
        self, engine: Engine, folders: RunFolders, probe: MountProbe, output_max: int
    ) -> None:
        self.engine = engine
        self.folders = folders
        self.probe = probe
        self.output_max = output_max
        self._cgroups: RunCgroups | None = None

    async def cgroups(self) -> RunCgroups:
        """The runs' parent cgroups, for the engine's cgroup driver."""
        if self._cgroups is None:
            self._cgroups = RunCgroups(await self.engine.cgroup_driver())
        return self._cgroups

    async def run(
        self,
        run_id: str,
        function: FunctionRecord,
        request: bytes,
        models: Sequence[Mounted] = (),
        sink: Sink | None = None,
    ) -> Outcome:
        """Runs ``function`` once with ``models`` (held by the caller) bound;
        ``sink`` is told its output as it comes."""
        spec = function.spec
        env = {**spec.env, "EDGELOADER_RUN_ID": run_id, "EDGELOADER_FUNCTION": function.name}
        if models:
            env["EDGELOADER_MODELS"] = MODELS_DIR
        await self.probe.check()  # never a run folder the engine does not see
        disk = spec.limits.disk_mb * MiB
        work = await asyncio.to_thread(self.folders.prepare, run_id, request, env, spec.user, disk)
        try:
            return await self._run_in(work, run_id, function, env, models, sink)
        finally:
            # In a thread of its own: it completes even when the run is cancelled.
            await asyncio.to_thread(self.folders.remove, run_id)

    async def _run_in(
        self,
        work: Path,
        run_id: str,
        function: FunctionRecord,
        env: dict[str, str],
        models: Sequence[Mounted],
        sink: Sink | None,
    ) -> Outcome:
        spec = function.spec
        cgroups = await self.cgroups()
        container = await self.container_spec(
            function,
            f"edgeloader-run-{run_id}",
            work,
            env,
            {LABEL_RUN: run_id, LABEL_FUNCTION: function.name},
            models,
            cgroups.parent(run_id),
        )
        try:
            container_id = await self.engine.create_container(container)
            try:
                output = OutputCapture(await self.engine.attach(container_id), self.output_max)
                output.sink = sink
                try:
                    ending = await self._run_container(container_id, spec.limits.timeout_s, output)
                finally:
                    await output.close()
            finally:
                await self._remove(container_id)
            usage = await asyncio.to_thread(cgroups.usage, run_id)
        finally:
            await asyncio.to_thread(cgroups.remove, run_id)
        ending = replace(ending, usage=usage, memory_limit=spec.limits.memory_mb * MiB)
        return await asyncio.to_thread(self._outcome, run_id, function, ending)

    async def container_spec(
        self,
        function: FunctionRecord,
        name: str,
        folder: Path,
        env: dict[str, str],
        labels: dict[str, str],
        models: Sequence[Mounted],
        cgroup_parent: str | None,
    ) -> ContainerSpec:
        """The isolated container of a run (or a warm container) of ``function``."""
        spec = function.spec
        return ContainerSpec(
            name=name,
            # The image deployed, by ID: a tag moved since cannot change the code.
            image=function.image_id or spec.image,
            command=tuple(spec.command) if spec.command else None,
            env=env,
            uid=spec.user,
            folder=folder,
            workdir=CONTAINER_DIR,
            memory_bytes=spec.limits.memory_mb * MiB,
            cpus=spec.limits.cpus,
            pids=spec.limits.pids,
            tmpfs_bytes=spec.limits.tmpfs_mb * MiB,
            labels=labels,
            volumes=await self.image_volumes(function),
            models=tuple(Bind(m.path, m.binding.target) for m in models),
            cgroup_parent=cgroup_parent,
        )

    async def image_volumes(self, function: FunctionRecord) -> tuple[str, ...]:
        """The VOLUME paths of the function's image; an image gone from the
        engine (removed, or the engine reset since the deploy) is said so,
        with what to do."""
        try:
            return await self.engine.image_volumes(function.image_id or function.spec.image)
        except NotFound:
            raise ImageGone(
                f"image of {function.name} v{function.version} is gone from the engine: "
                "redeploy or unlock again"
            ) from None

    async def _run_container(
        self, container_id: str, timeout_s: int, output: OutputCapture
    ) -> Ending:
        await self.engine.start_container(container_id)
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                await self.engine.wait_container(container_id)
        except TimeoutError:
            # Killed only if it still runs: an engine slow to report an end
            # must not turn a run that finished in time into a timeout.
            timed_out = (await self.engine.container_exit(container_id)).running
            if timed_out:
                await self.engine.kill_container(container_id)
                try:
                    async with asyncio.timeout(_KILL_GRACE):
                        await self.engine.wait_container(container_id)
                except TimeoutError:
                    log.warning("container %s did not stop after SIGKILL", container_id)
        exit_ = await self.engine.container_exit(container_id)
        await output.ended(within=_KILL_GRACE)
        reports_oom = (await self.engine.backend()).reports_oom
        return Ending(exit_, output.take(), timed_out, reports_oom)

    async def _remove(self, container_id: str) -> None:
        """Removes the container even when the run is being cancelled."""
        removal = asyncio.ensure_future(self.engine.remove_container(container_id))
        try:
            await asyncio.shield(removal)
        except asyncio.CancelledError:
            await asyncio.wait([removal])  # finish removing, then pass the cancellation on
            _log_failure(removal, container_id)
            raise
        except EdgeloaderError as exc:
            # The housekeeping removes it later: it knows the run's label.
            log.warning("could not remove container %s: %s", container_id, exc.detail)

    def _outcome(self, run_id: str, function: FunctionRecord, ending: Ending) -> Outcome:
        """How the run ended, with what it left (read before its folder goes)."""
        limits = function.spec.limits
        left = {
            "cpu_ms": ending.usage.cpu_ms,
            "memory_peak_mb": ending.usage.memory_peak_mb,
            "truncated": ending.output.truncated,
            "stdout": ending.output.stdout,
            "stderr": ending.output.stderr,
            "logs": self.folders.read_logs(run_id, self.output_max),
            "started": True,
        }
        code = ending.exit.code
        if ending.timed_out:
            error = f"killed after the time limit of {limits.timeout_s} s"
            return Outcome(RunStatus.TIMEOUT, code, error, **left)
        if ending.oom:
            error = f"killed: out of memory (limit {limits.memory_mb} MiB)"
            return Outcome(RunStatus.OOM, code, error, **left)
        if code != 0:
            error = f"exited with code {code}"
            last = _last_line(ending.output.stderr)
            return Outcome(RunStatus.FAILED, code, f"{error}: {last}" if last else error, **left)
        try:
            result = self.folders.read_result(run_id, self.output_max)
        except BadOutput as exc:
            return Outcome(RunStatus.FAILED, code, str(exc), **left)
        return Outcome(RunStatus.SUCCEEDED, code, None, result, **left)


def _last_line(stderr: bytes) -> str:
    for line in reversed(stderr.decode("utf-8", errors="replace").splitlines()):
        if line.strip():
            return line.strip()[:_ERROR_LINE]
    return ""


def _log_failure(removal: asyncio.Future[None], container_id: str) -> None:
    if not removal.cancelled() and removal.exception() is not None:
        log.warning("could not remove container %s: %s", container_id, removal.exception())
