"""Unlock: key fragment → archive key → decrypt ``images.enc`` as a stream
straight into the engine's image load. No temp file, no plaintext on disk.

One unlock runs at a time, in the background; callers poll its status.
Reading, decrypting and loading overlap: the engine consumes an async
generator that reads the next chunk only when the engine wants it.

The password an unlock carries is throttled and audited like a login
(``AuthService.begin_login``), and the unlock changes the user the device
is logged in as only for a caller who may (``DeviceSession.sign_in``).

Every change of state, and the progress at most every ``Pacer`` interval,
is published on the event bus (``unlock`` events, the fields of
``/unlock/status``); each run's outcome is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import Field

from edgeloader import crypto
from edgeloader.auth.service import AuthService, LoginAttempt
from edgeloader.errors import EdgeloaderError, EngineError, NotFound
from edgeloader.events import UNLOCK, Event, EventBus, Pacer
from edgeloader.metrics import Metrics
from edgeloader.services.manifest import ARCHIVE_KEY, Release, ReleaseGate
from edgeloader.services.session import DeviceSession, UpstreamUser
from edgeloader.streams import read_ahead
from edgeloader.upstream.engine import Engine
from edgeloader.wire import Record

log = logging.getLogger(__name__)

#: Plaintext chunks decrypted ahead of the engine: memory is this many chunks.
READ_AHEAD = 2


class UnlockState(enum.StrEnum):
    IDLE = "idle"
    AUTHENTICATING = "authenticating"
    DOWNLOADING_KEY = "downloading_key"
    DECRYPTING = "decrypting"
    LOADING_IMAGES = "loading_images"
    READY = "ready"
    ERROR = "error"


class UnlockStatus(Record):
    """The unlock's progress: the answer of ``/unlock/status`` and its events."""

    state: UnlockState = UnlockState.IDLE
    error: str | None = Field(None, description="set in state `error`")
    bytes_done: int = 0
    bytes_total: int = 0
    images: list[str] = Field(
        default_factory=list,
        description=(
            "in state `ready`: the images the unlock loaded, or, when every expected "
            "image was already in the engine, those"
        ),
    )

    def event(self) -> Event:
        return Event(UNLOCK, self.wire())


async def decrypted_archive(
    key: bytes,
    path: Path,
    chunk_size: int,
    progress: Callable[[int], None],
    release: Release | None = None,
) -> AsyncIterator[bytes]:
    """Plaintext of the archive (v1 or v2), read once; ``progress`` gets the
    ciphertext bytes read.

    Under a release, the format and size are checked first and every chunk
    read passes the release's segment gate before the decryptor sees it, so
    no byte the engine receives was made from unverified ciphertext.
    """
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        verified = None
        if release is not None:
            await asyncio.to_thread(_check_archive, handle, release)
            verified = release.gate()

        async def ciphertext() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                progress(len(chunk))
                out = verified.update(chunk) if verified is not None else chunk
                if out:
                    yield out
            if verified is not None:
                verified.finish()

        # The next chunks are read and decrypted while the engine takes this one.
        plain = read_ahead(crypto.decrypt_stream(key, ciphertext()), READ_AHEAD)
        async with contextlib.aclosing(plain):
            async for chunk in plain:
                yield chunk
    finally:
        handle.close()


def _check_archive(handle: BinaryIO, release: Release) -> None:
    """The open archive's format and size, leaving it at the start."""
    size = os.fstat(handle.fileno()).st_size
    fmt = crypto.detect_format(handle.read(crypto.FORMAT_PREFIX))
    handle.seek(0)
    release.check(fmt=fmt, size=size)


#: How both engines' load answers name an image they loaded (backends' ``load``).
LOADED_IMAGE = "Loaded image: "


def loaded_images(messages: list[str]) -> list[str]:
    """The image names in an engine's load messages, in their order."""
    names = (m.removeprefix(LOADED_IMAGE).strip() for m in messages if m.startswith(LOADED_IMAGE))
    return list(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True)
class UnlockRequest:
    """Who asks for an unlock, with which upstream credentials."""

    email: str
    password: str
    client: str  # the caller's address, for the throttle
    caller_role: str | None  # the caller's token role; None without one
    route: str = "POST /unlock"


class UnlockManager:
    def __init__(
        self,
        session: DeviceSession,
        engine: Engine,
        gate: ReleaseGate,
        auth: AuthService,
        metrics: Metrics,
        events: EventBus | None = None,
    ) -> None:
        self.metrics = metrics
        self.session = session
        self.engine = engine
        self.gate = gate
        self.auth = auth
        self.events = events
        self.status = UnlockStatus()
        self._pacer = Pacer()
        self._task: asyncio.Task[None] | None = None
        # start() awaits the engine before creating the task; without the
        # lock, concurrent callers could all pass the `running` check.
        self._starting = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, request: UnlockRequest) -> UnlockStatus:
        """Starts an unlock unless one runs or every image is already there.

        Neither of those two answers looks at the credentials: nothing is
        unlocked and nothing upstream is asked, so they tell a guesser
        nothing (docs/security.md). Starting a run reserves a password
        attempt first, which raises ``TooManyAttempts`` while the address or
        the identity must wait.
        """
        async with self._starting:
            return await self._start(request)

    async def _start(self, request: UnlockRequest) -> UnlockStatus:
        if self.running:
            return self.status
        settings = self.session.settings
        expected = settings.expected_images
        try:
            if expected and not await self.engine.missing_images(expected):
                self.status = UnlockStatus(state=UnlockState.READY, images=list(expected))
                self._publish()
                return self.status
        except EngineError as exc:
            self.status = UnlockStatus(state=UnlockState.ERROR, error=exc.detail)
            log.error("unlock: %s", exc.detail)
            self.metrics.unlock_ended("error")
            self._publish()
            return self.status
        if not settings.images_path.is_file():
            raise NotFound(f"image archive not found: {settings.images_path}")
        total = settings.images_path.stat().st_size
        attempt = await self.auth.begin_login(
            request.email, request.password, request.client, request.route
        )
        self.status = UnlockStatus(state=UnlockState.AUTHENTICATING, bytes_total=total)
        self._publish()
        self._task = asyncio.create_task(self._run(request, attempt), name="unlock")
        return self.status

    def _publish(self) -> None:
        if self.events is not None:
            self.events.publish(self.status.event())
        self._pacer.sent()

    def _set(self, state: UnlockState) -> None:
        log.info("unlock: %s", state.value)
        self.status.state = state
        self._publish()

    def _progress(self, n: int) -> None:
        self.status.bytes_done += n
        if self._pacer.due():
            self._publish()

    async def _run(self, request: UnlockRequest, attempt: LoginAttempt) -> None:
        settings = self.session.settings
        before: set[str] | None = None
        user: UpstreamUser | None = None
        error: str | None = None
        loaded: list[str] = []
        try:
            user = await attempt.run(
                lambda: self.session.sign_in(
                    request.email, request.password, caller_role=request.caller_role
                )
            )
            self._set(UnlockState.DOWNLOADING_KEY)
            key = crypto.archive_key(await user.key_fragment())
            release = await self.gate.release(user.fetch_small, "", ARCHIVE_KEY)
            before = await self.engine.image_ids()
            self._set(UnlockState.DECRYPTING)
            archive = decrypted_archive(
                key, settings.images_path, settings.chunk_size, self._progress, release
            )
            messages = await self.engine.load(self._mark_sent(archive))
            for line in messages:
                log.info("engine: %s", line)
            loaded = loaded_images(messages)
            missing = await self.engine.missing_images(settings.expected_images)
            if missing:
                raise NotFound(f"archive loaded but images missing: {', '.join(missing)}")
        except EdgeloaderError as exc:
            error = exc.detail
        except Exception as exc:
            log.exception("unlock failed unexpectedly")
            error = f"unexpected error: {exc}"
        finally:
            await attempt.abandon()  # only if the attempt never ran
            if user is not None:
                await user.close()
        if error is not None:
            log.error("unlock failed: %s", error)
            await self._remove_partial(before)
        # The outcome goes out last: a caller who sees "ready" or "error"
        # may start the next run at once, and must find this one over.
        if error is None:
            self.status.images = loaded
        self._finish(error)

    async def _mark_sent(self, archive: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Passes the archive through; once it is all sent, the engine is
        still unpacking, which the status shows as ``loading_images``."""
        async for chunk in archive:
            yield chunk
        self._set(UnlockState.LOADING_IMAGES)

    def _finish(self, error: str | None) -> None:
        if error is None:
            self.status.state = UnlockState.READY
            self.metrics.unlock_ended("ready")
        else:
            self.status.error = error
            self.status.state = UnlockState.ERROR
            self.metrics.unlock_ended("error")
        log.info("unlock: %s", self.status.state.value)
        self._publish()

    async def _remove_partial(self, before: set[str] | None) -> None:
        """Removes what a failed load left in the engine, if it got that far."""
        if before is None:
            return
        try:
            new = await self.engine.image_ids() - before
            if new:
                await self.engine.remove_images(new)
        except EdgeloaderError:
            log.warning("could not check the engine for partial images", exc_info=True)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
