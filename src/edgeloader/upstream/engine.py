"""Client of the container engine (aiodocker on ``DOCKER_HOST``).

Works with Docker's engine and with podman's Docker-compatible service.
Every call goes through :func:`_mapped`, the one place where aiodocker's,
aiohttp's and the OS's errors become ours:

- a connection failure is "engine unreachable";
- a 404 is :class:`NotFound`, for the calls where absence is an answer;
- our own error raised inside a streamed request body (say, a decryption
  failure while an archive uploads) reaches us wrapped in transport errors,
  and is dug out and raised as itself;
- anything else is :class:`EngineError` naming the operation.

Image-load errors come back in two shapes: Docker reports them as an
``errorDetail`` item inside a 200 stream, podman as an HTTP error; both
become :class:`EngineError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, Iterator
from typing import Any

import aiodocker
import aiohttp

from edgeloader.errors import EdgeloaderError, EngineError, NotFound

log = logging.getLogger(__name__)

# aiodocker's status for "could not connect to the engine".
_CANNOT_CONNECT = 900


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


class Engine:
    def __init__(self, docker_host: str | None) -> None:
        self.docker_host = docker_host
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        # Created lazily: aiodocker needs a running loop, and a box without
        # an engine should still serve models.
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.docker_host)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    @contextlib.contextmanager
    def _mapped(self, what: str, *, missing: str | None = None) -> Iterator[None]:
        """Maps lower layers' errors to ours; ``missing`` words a 404."""
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
            if exc.status == 404 and missing is not None:
                raise NotFound(missing) from None
            raise EngineError(f"{what} failed: {exc.message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            cause = _find_cause(exc)
            if cause is not None:
                raise cause from None
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> EngineError:
        where = self.docker_host or "the default socket"
        return EngineError(f"container engine unreachable at {where}: {exc}")

    # Images

    async def load(self, archive: AsyncIterable[bytes]) -> list[str]:
        """Streams a ``docker save`` archive into the engine's image load.

        Returns the engine's messages. There is no total timeout: a big
        archive on a slow device may take minutes.
        """
        messages: list[str] = []
        with self._mapped("image load"):
            stream = self.docker.images.import_image(data=archive, stream=True, timeout=None)
            async for item in stream:
                if not isinstance(item, dict):
                    continue
                error = item.get("errorDetail") or item.get("error")
                if error:
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise EngineError(f"image load failed: {detail}")
                text = str(item.get("stream") or item.get("status") or "").strip()
                if text:
                    messages.append(text)
        return messages

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        """The engine's record of an image; :class:`NotFound` if it has none."""
        with self._mapped("image inspect", missing=f"image {ref} is not in the engine"):
            info: dict[str, Any] = await self.docker.images.inspect(ref)
        return info

    async def missing_images(self, refs: tuple[str, ...]) -> list[str]:
        """Those of ``refs`` the engine does not have."""
        missing = []
        for ref in refs:
            try:
                await self.inspect_image(ref)
            except NotFound:
                missing.append(ref)
        return missing

    async def image_ids(self) -> set[str]:
        with self._mapped("image list"):
            images: list[dict[str, Any]] = await self.docker.images.list(all=True)
        return {str(img.get("Id")) for img in images}

    async def remove_images(self, ids: set[str]) -> None:
        """Best-effort removal, used to clean up after a failed load."""
        for image_id in ids:
            try:
                with self._mapped("image remove"):
                    await self.docker.images.delete(image_id, force=True)
                log.info("removed partially loaded image %s", image_id)
            except EdgeloaderError:
                log.warning("could not remove image %s", image_id, exc_info=True)
