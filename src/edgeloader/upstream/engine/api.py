"""The engine's HTTP API, as both engines answer it: the aiodocker client on
``DOCKER_HOST``, and the one place where aiodocker's, aiohttp's and the
OS's errors become ours (:meth:`EngineApi.mapped`):

- a connection failure is "engine unreachable";
- a 404 is :class:`NotFound`, for the calls where absence is an answer;
- our own error raised inside a streamed request body (say, a decryption
  failure while an archive uploads) reaches us wrapped in transport errors,
  and is dug out and raised as itself;
- anything else is :class:`EngineError` naming the operation.

Also the reader of the engine's line-delimited JSON answers (loads,
builds), which both engines share.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterable, Collection, Iterator
from typing import Any

import aiodocker
import aiohttp

from edgeloader.errors import EdgeloaderError, EngineError, NotFound, ValidationFailed

__all__ = ["NO_TIMEOUT", "EngineApi", "json_lines", "stream_error", "without_paths"]

# aiodocker's status for "could not connect to the engine".
_CANNOT_CONNECT = 900
_MAX_LINE = 64 * 1024  # a longer line of a JSON stream is cut
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


def _find_cause(exc: BaseException) -> EdgeloaderError | None:
    """Our own error somewhere in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EdgeloaderError):
            return current
        stack += [current.__cause__, current.__context__]
    return None


class EngineApi:
    """The aiodocker client of one engine, opened on first use."""

    def __init__(self, docker_host: str | None) -> None:
        self.docker_host = docker_host
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        # Created lazily: aiodocker needs a running loop, and a box without
        # an engine should still serve models.
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self.docker_host)
            except (AssertionError, ValueError):
                # aiodocker asserts when neither DOCKER_HOST nor a default
                # socket exists: a box without an engine, not a bug.
                raise EngineError(
                    "no container engine: set DOCKER_HOST (none is set, and no default "
                    "socket exists)"
                ) from None
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    @contextlib.contextmanager
    def mapped(
        self,
        what: str,
        *,
        missing: str | None = None,
        invalid: str | None = None,
        ignore: Collection[int] = (),
        refused: type[EdgeloaderError] = EngineError,
        hide_paths: bool = False,
    ) -> Iterator[None]:
        """Maps lower layers' errors to ours; ``missing`` words a 404, and
        ``invalid`` a 400 (the caller's input was refused: a 422, not a 502).
        With ``hide_paths``, the engine's own file paths leave its message
        (:func:`without_paths`).

        An engine answer whose status is in ``ignore`` is no error (the
        block ends there); any other refusal becomes ``refused``.
        """
        try:
            yield
        except EdgeloaderError:
            raise
        except aiodocker.DockerError as exc:
            cause = _find_cause(exc)
            if cause is not None:
                raise cause from None
            if exc.status == _CANNOT_CONNECT or isinstance(
                exc.__context__, aiohttp.ClientConnectionError
            ):
                raise self._unreachable(exc) from exc
            if exc.status in ignore:
                return
            if exc.status == 404 and missing is not None:
                raise NotFound(missing) from None
            if exc.status == 400 and invalid is not None:
                raise ValidationFailed(f"{invalid}: {exc.message}") from None
            message = without_paths(exc.message) if hide_paths else exc.message
            raise refused(f"{what} failed: {message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            cause = _find_cause(exc)
            if cause is not None:
                raise cause from None
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> EngineError:
        where = self.docker_host or "the default socket"
        return EngineError(f"container engine unreachable at {where}: {exc}")

    def query(
        self, path: str, method: str = "GET", *, versioned: bool = True, **kw: Any
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A raw request (``versioned=False`` for podman's own routes, which
        carry their version in the path)."""
        return self.docker._query(path, method, versioned_api=versioned, **kw)


async def json_lines(stream: aiohttp.StreamReader) -> AsyncIterable[dict[str, Any]]:
    """The JSON objects of a line-delimited stream; lines past ``_MAX_LINE``
    are cut, and lines that are not JSON objects are skipped."""
    pending = b""
    while True:
        chunk = await stream.read(1 << 16)
        data = pending + chunk
        *complete, pending = data.split(b"\n")
        if len(pending) > _MAX_LINE:
            complete.append(pending[:_MAX_LINE])
            pending = b""
        if not chunk and pending:
            complete.append(pending)
            pending = b""
        for line in complete:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item
        if not chunk:
            return


# An absolute path, alone or inside the reference podman makes of its spool
# file (``localhost/tmp/podman-…/libpod-images-load.tar…``). Behind
# ``localhost`` only the spool's top directories count, so an image name
# such as ``localhost/edge/detector:1.2`` stays whole.
_PATH = re.compile(
    r"(?:(?<![\w./])|(?<=\blocalhost)(?=/(?:tmp|var|run|home|root)/))"
    r"/(?:[\w.@+-]+/)*[\w.@+-]+"
)


def without_paths(message: str) -> str:
    """The message with absolute file paths replaced by ``…``: an image
    load's error names the engine's spool files (``/var/tmp/…``,
    ``<data-root>/tmp/docker-import-…``), which say nothing to a caller
    and show the box's layout (they stay in the engine's own log)."""
    return _PATH.sub("…", message)


def stream_error(item: dict[str, Any]) -> str | None:
    """The engine's refusal inside a streamed answer (``errorDetail`` or
    ``error``), if this item is one."""
    error = item.get("errorDetail") or item.get("error")
    if not error:
        return None
    detail = error.get("message") if isinstance(error, dict) else error
    return str(detail).strip()
