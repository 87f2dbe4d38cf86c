"""Warm functions: containers kept running between invokes, each serving
them over a unix socket in its folder (docs/functions.md, "Warm functions").

A warm container is started like a cold run's (the same isolation, limits
and model mounts; its folder a tmpfs of ``diskMb`` for the container's
life) with ``EDGELOADER_SOCKET=/app/functions/function.sock`` and no run
id. It is ready when that socket accepts a connection; the wait counts
against the first invoke's ``timeoutS``. Each invoke is one ``POST
/invoke`` with the body and ``X-Edgeloader-Run-Id``; a 2xx JSON answer is
the run's ``result``. Output is read through one attach for the
container's life and split per invoke.

Reuse rules:

- a container serves one invoke at a time, and only the version and the
  model identities it was started with; the function's concurrency is
  ``warm.max`` (invokes beyond it wait in the function's queue);
- an update or delete drains the function: idle containers go at once,
  busy ones when their invoke ends;
- an invoke past ``timeoutS``, a dropped connection, or a container that
  died removes the container; the next invoke starts a new one (cold);
- ``idleS`` after its last invoke a container is removed, and at most
  ``EDGELOADER_WARM_MAX`` idle ones are kept box-wide (the least recently
  used go first).

The socket is the function's: the loader connects only to a socket owned
by the run's uid, through a descriptor opened with ``O_PATH |
O_NOFOLLOW`` (``/proc/self/fd/N``), so a symbolic link or any other file
there fails the run and the loader connects to nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeloader.errors import EdgeloaderError
from edgeloader.functions.folders import CONTAINER_DIR
from edgeloader.functions.models import ModelStore, Mounted
from edgeloader.functions.output import OutputCapture, Sink
from edgeloader.functions.records import FunctionRecord, Outcome, RunStatus
from edgeloader.functions.runner import Runner
from edgeloader.functions.spec import MODELS_DIR

__all__ = ["LABEL_WARM", "SOCKET", "WarmPool"]

log = logging.getLogger(__name__)

MiB = 1 << 20
LABEL_WARM = "edgeloader.warm"
LABEL_FUNCTION = "edgeloader.function"
SOCKET = "function.sock"
_READY_POLL = 0.01
# After an answer, the output of its invoke is taken once the container's
# output has been quiet this long (at most _OUTPUT_WITHIN): the engine
# forwards what the handler printed on its own path, not with the answer.
_OUTPUT_QUIET, _OUTPUT_WITHIN = 0.002, 0.05
_MAX_HEAD = 16 * 1024


class HandlerFailed(Exception):
    """The handler gave no usable answer; the message says why."""


@dataclass(eq=False)
class _Container:
    key: str  # its folder's and its cgroup's name
    function: str
    version: int
    models: tuple[str, ...]  # the identities it mounted
    container_id: str
    uid: int
    folder: Path
    output: OutputCapture
    held: contextlib.AsyncExitStack
    idle_s: int
    busy: bool = True
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)


class WarmPool:
    def __init__(
        self,
        runner: Runner,
        models: ModelStore,
        output_max: int,
        idle_max: int,
    ) -> None:
        self.runner = runner
        # This loader's mark on its warm containers: its functions folder.
        self.instance = hashlib.sha256(str(runner.folders.root).encode()).hexdigest()[:16]
        self.engine = runner.engine
        self.folders = runner.folders
        self.probe = runner.probe
        self.models = models
        self.output_max = output_max
        self.idle_max = idle_max
        self._containers: list[_Container] = []
        # Removals of retired containers, kept from the garbage collector.
        self._removals: set[asyncio.Task[None]] = set()

    # Runs

    async def run(
        self,
        run_id: str,
        function: FunctionRecord,
        request: bytes,
        models: Sequence[Mounted],
        sink: Sink | None = None,
    ) -> Outcome:
        """One invoke of a warm function, within its ``timeoutS``; ``sink``
        is told what the container prints meanwhile."""
        spec = function.spec
        identities = tuple(m.identity for m in models)
        started = time.monotonic()
        container = self._idle(function, identities)
        if container is not None and await self._exited(container):
            log.info("warm container %s of %s had exited: replaced", container.key, function.name)
            await self._remove(container)
            container = None
        cold = container is None
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                if container is None:
                    container = await self._start(function, identities, models)
                container.output.sink = sink
                if cold:
                    await self._ready(container)
                outcome = await self._invoke(container, run_id, request, cold)
        except HandlerFailed as exc:  # it died before it was ready
            assert container is not None
            output = container.output.take()
            await self._remove(container)
            return Outcome(
                RunStatus.FAILED,
                error=f"warm handler: {exc}",
                stdout=output.stdout,
                stderr=output.stderr,
                truncated=output.truncated,
                started=True,
                cold_start=cold,
            )
        except TimeoutError:
            if container is not None:
                output = container.output.take()
                await self._remove(container)
            else:
                output = None
            seconds = round(time.monotonic() - started, 1)
            return Outcome(
                RunStatus.TIMEOUT,
                error=f"killed after the time limit of {spec.limits.timeout_s} s ({seconds} s)",
                stdout=output.stdout if output else b"",
                stderr=output.stderr if output else b"",
                truncated=output.truncated if output else False,
                started=True,
                cold_start=cold,
            )
        except BaseException:
            if container is not None:
                await self._remove(container)
            raise
        finally:
            # Not the sink of an invoke that already took the container over.
            if container is not None and container.output.sink is sink:
                container.output.sink = None
        return outcome

    def _idle(self, function: FunctionRecord, identities: tuple[str, ...]) -> _Container | None:
        for container in self._containers:
            if (
                container.function == function.name
                and container.version == function.version
                and container.models != identities
            ):
                # A model it mounted has a new release: it serves no more.
                container.retired = True
                if not container.busy:
                    self._schedule_removal(container)
            if (
                not container.busy
                and not container.retired
                and container.function == function.name
                and container.version == function.version
                and container.models == identities
            ):
                container.busy = True
                return container
        return None

    async def _start(
        self, function: FunctionRecord, identities: tuple[str, ...], models: Sequence[Mounted]
    ) -> _Container:
        spec = function.spec
        await self.probe.check()
        key = uuid.uuid4().hex
        env = {
            **spec.env,
            "EDGELOADER_FUNCTION": function.name,
            "EDGELOADER_SOCKET": f"{CONTAINER_DIR}/{SOCKET}",
        }
        if models:
            env["EDGELOADER_MODELS"] = MODELS_DIR
        disk = spec.limits.disk_mb * MiB
        folder = await asyncio.to_thread(self.folders.prepare, key, None, env, spec.user, disk)
        held = contextlib.AsyncExitStack()
        held.push_async_callback(asyncio.to_thread, self.folders.remove, key)
        try:
            # The models stay held for the container's life.
            await held.enter_async_context(self.models.held(models))
            cgroups = await self.runner.cgroups()
            container_spec = await self.runner.container_spec(
                function,
                f"edgeloader-warm-{key}",
                folder,
                env,
                {LABEL_WARM: self.instance, LABEL_FUNCTION: function.name},
                models,
                cgroups.parent(key),
            )
            held.push_async_callback(asyncio.to_thread, cgroups.remove, key)
            container_id = await self.engine.create_container(container_spec)
            held.push_async_callback(self._remove_container, container_id)
            output = OutputCapture(await self.engine.attach(container_id), self.output_max)
            held.push_async_callback(output.close)
            await self.engine.start_container(container_id)
        except BaseException:
            await held.aclose()
            raise
        assert spec.warm is not None
        container = _Container(
            key, function.name, function.version, identities, container_id, spec.user,
            folder, output, held, spec.warm.idle_s,
        )  # fmt: skip
        self._containers.append(container)
        log.info("started warm container %s for %s v%d", key, function.name, function.version)
        return container

    async def _ready(self, container: _Container) -> None:
        """Waits until the handler's socket accepts a connection."""
        while True:
            try:
                _, writer = await _connect(container.folder / SOCKET, container.uid)
            except (FileNotFoundError, ConnectionRefusedError):
                if await self._exited(container):
                    raise HandlerFailed("the handler exited before its socket was ready") from None
                await asyncio.sleep(_READY_POLL)
                continue
            writer.close()
            return

    async def _invoke(
        self, container: _Container, run_id: str, request: bytes, cold: bool
    ) -> Outcome:
        cgroups = await self.runner.cgroups()
        await asyncio.to_thread(cgroups.reset_peak, container.key)
        before = await asyncio.to_thread(cgroups.usage, container.key)
        try:
            status, body = await _post(container, run_id, request, self.output_max)
            error = None
        except (HandlerFailed, OSError) as exc:
            status, body, error = 0, b"", str(exc) or type(exc).__name__
        await container.output.settle(_OUTPUT_QUIET, _OUTPUT_WITHIN)
        output = container.output.take()
        container.output.sink = None  # what comes next is not this run's
        used = await asyncio.to_thread(cgroups.usage, container.key)
        cpu_ms = None
        if used.cpu_ns is not None and before.cpu_ns is not None:
            cpu_ms = round((used.cpu_ns - before.cpu_ns) / 1e6)
        # What this invoke left, whatever its end.
        left = Outcome(
            RunStatus.FAILED,
            stdout=output.stdout,
            stderr=output.stderr,
            truncated=output.truncated,
            started=True,
            cold_start=cold,
            cpu_ms=cpu_ms,
            memory_peak_mb=used.memory_peak_mb,
        )
        if error is not None:
            await self._remove(container)
            return replace(left, error=f"warm handler: {error}")
        self._release(container)
        first = body.split(b"\n", 1)[0].decode("utf-8", "replace")[:200]
        if not 200 <= status < 300:
            return replace(left, error=f"warm handler answered {status}: {first}")
        try:
            result = json.loads(body)
        except (ValueError, RecursionError):
            return replace(left, error=f"warm handler answered {status}, not JSON")
        return replace(left, status=RunStatus.SUCCEEDED, result=result)

    def _release(self, container: _Container) -> None:
        container.busy = False
        container.last_used = time.monotonic()
        if container.retired:
            self._schedule_removal(container)

    # Life cycle

    async def drain(self, function: str) -> None:
        """An update or delete of ``function``: its idle containers go now,
        its busy ones when their invoke ends."""
        for container in list(self._containers):
            if container.function == function:
                container.retired = True
                if not container.busy:
                    await self._remove(container)

    async def reap(self) -> None:
        """Removes containers idle past their function's ``idleS``, and the
        least recently used beyond the box's idle bound."""
        now = time.monotonic()
        expired = [c for c in self._containers if not c.busy and now - c.last_used >= c.idle_s]
        idle = sorted(
            (c for c in self._containers if not c.busy and c not in expired),
            key=lambda c: c.last_used,
        )
        doomed = expired + idle[: max(0, len(idle) - self.idle_max)]
        for container in doomed:
            # Marked before the first await: an invoke never picks one of them.
            container.retired = True
        for container in doomed:
            await self._remove(container)

    def keys(self) -> set[str]:
        """The warm containers' keys (their folders' and cgroups' names)."""
        return {c.key for c in self._containers}

    async def remove_strays(self) -> None:
        """Warm containers of this loader that the pool does not hold: a
        crashed process left them (the first pass runs at start-up)."""
        ours = {c.container_id for c in self._containers}
        labelled = await self.engine.labelled_containers(LABEL_WARM)
        for container_id, instance in labelled.items():
            if instance == self.instance and container_id not in ours:
                await self._remove_container(container_id)
                log.info("removed the warm container %s a dead process left", container_id)

    async def close(self) -> None:
        for container in list(self._containers):
            await self._remove(container)

    async def _exited(self, container: _Container) -> bool:
        try:
            return not (await self.engine.container_exit(container.container_id)).running
        except EdgeloaderError:
            return True

    def _schedule_removal(self, container: _Container) -> None:
        task = asyncio.get_running_loop().create_task(self._remove(container))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, container: _Container) -> None:
        if container in self._containers:
            self._containers.remove(container)
        # Shielded: a cancelled invoke still removes its container.
        await asyncio.shield(container.held.aclose())
        log.info("removed warm container %s of %s", container.key, container.function)

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self.engine.remove_container(container_id)
        except EdgeloaderError as exc:
            log.warning("could not remove container %s: %s", container_id, exc.detail)


async def _connect(path: Path, uid: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the socket at ``path`` if, and only if, it is a
    socket owned by ``uid`` (not a link to one, nor anything else)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise HandlerFailed(f"{SOCKET} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode):
            raise HandlerFailed(f"{SOCKET} is not a socket")
        if info.st_uid != uid:
            raise HandlerFailed(f"{SOCKET} is not the function's own")
        return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


async def _post(
    container: _Container, run_id: str, request: bytes, limit: int
) -> tuple[int, bytes]:
    """``POST /invoke`` over the container's socket: the status and body."""
    reader, writer = await _connect(container.folder / SOCKET, container.uid)
    try:
        writer.write(
            b"POST /invoke HTTP/1.1\r\nHost: function\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(request)}\r\nX-Edgeloader-Run-Id: {run_id}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + request
        )
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise HandlerFailed("the handler closed the connection without an answer") from None
        except asyncio.LimitOverrunError:
            raise HandlerFailed("the handler's answer head is too long") from None
        if len(head) > _MAX_HEAD:
            raise HandlerFailed("the handler's answer head is too long")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HandlerFailed(f"not an HTTP answer: {lines[0][:100]!r}") from None
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        if length is not None and length > limit:
            raise HandlerFailed(f"the handler's answer is larger than {limit} bytes")
        if length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read(limit + 1)
            if len(body) > limit:
                raise HandlerFailed(f"the handler's answer is larger than {limit} bytes")
        return status, body
    except asyncio.IncompleteReadError:
        raise HandlerFailed("the handler closed the connection mid-answer") from None
    finally:
        writer.close()
