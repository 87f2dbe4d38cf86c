"""Pre-staging: a resource's ciphertext downloaded into the model cache in
the background, so that a later load needs only the Resource API.

A job is journaled in SQLite and resumes after a restart from its last
durable checkpoint; docs/architecture.md ("Pre-staging") gives the tour:
the journal, checkpoints, resumption and the checks before a partial file
becomes a cache entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from edgeloader import crypto
from edgeloader.config import Settings
from edgeloader.errors import (
    Conflict,
    DecryptionError,
    DeviceNotLoggedIn,
    EdgeloaderError,
    IntegrityError,
    NotFound,
    ObjectChanged,
)
from edgeloader.events import PREFETCH, Event, EventBus, Pacer
from edgeloader.services.cache import ModelCache, PartialEntry, cache_tag
from edgeloader.services.download import Alignment, Download, Transfers
from edgeloader.services.manifest import Artifact, CiphertextHash, ReleaseGate
from edgeloader.services.session import DeviceSession
from edgeloader.storage.sqlite import Database
from edgeloader.wire import OneOf, Record

__all__ = ["JOURNAL_FILE", "PrefetchService", "PrefetchStatus"]

log = logging.getLogger(__name__)

JOURNAL_FILE = "prefetch.db"
CHECKPOINT_BYTES = 8 << 20
CHECKPOINT_SECONDS = 1.0
LOGIN_POLL = 1.0
FIRST_WAIT, MAX_WAIT = 2.0, 60.0
#: Times a job starts over on a changed object before it gives up.
MAX_RESTARTS = 3

# Job states, the ``state`` of the answers and events.
WAITING = "waiting"  # for the device's login, or to try again (``error`` says why)
RUNNING = "running"
VERIFYING = "verifying"
DONE = "done"
FAILED = "failed"
STATES = (WAITING, RUNNING, VERIFYING, DONE, FAILED)

MIGRATIONS = (
    """
    CREATE TABLE prefetch (
        folder TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        tag TEXT NOT NULL DEFAULT '',        -- the small part's cache tag
        etag TEXT NOT NULL DEFAULT '',       -- the big part's version being read
        small_size INTEGER NOT NULL DEFAULT 0,
        big_size INTEGER NOT NULL DEFAULT 0,
        good INTEGER NOT NULL DEFAULT 0,     -- durable, checked bytes of the partial file
        error TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (folder, name)
    );
    """,
)


@dataclass
class _Row:
    folder: str
    name: str
    state: str
    tag: str = ""
    etag: str = ""
    small_size: int = 0
    big_size: int = 0
    good: int = 0
    error: str | None = None


class _Journal:
    """The jobs' durable state (blocking; call from a worker thread)."""

    def __init__(self, path: Path) -> None:
        self._db = Database(path, MIGRATIONS)

    def get(self, folder: str, name: str) -> _Row | None:
        with self._db.reading() as db:
            found = db.execute(
                "SELECT folder, name, state, tag, etag, small_size, big_size, good, error"
                " FROM prefetch WHERE folder = ? AND name = ?",
                (folder, name),
            ).fetchone()
        return _Row(*found) if found else None

    def unfinished(self) -> list[_Row]:
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT folder, name, state, tag, etag, small_size, big_size, good, error"
                " FROM prefetch WHERE state NOT IN (?, ?) ORDER BY updated",
                (DONE, FAILED),
            ).fetchall()
        return [_Row(*r) for r in rows]

    def save(self, row: _Row) -> None:
        values = asdict(row)
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO prefetch"
                " (folder, name, state, tag, etag, small_size, big_size, good, error, updated)"
                " VALUES (:folder, :name, :state, :tag, :etag, :small_size, :big_size, :good,"
                " :error, :updated)",
                {**values, "updated": time.time()},
            )

    def close(self) -> None:
        self._db.close()


class PrefetchStatus(Record):
    """A pre-staging job's state: the answer of its routes and its events."""

    model_config = ConfigDict(frozen=True)

    folder: str
    name: str
    state: Annotated[str, OneOf(STATES)]
    bytes_done: int = Field(description="ciphertext bytes in hand, small and big parts")
    bytes_total: int = Field(description="0 until the CDN has given the size")
    error: str | None = Field(description="why it waits or failed")


class _Job:
    def __init__(self, row: _Row) -> None:
        self.row = row
        self.written = row.good  # bytes of the partial file written, checkpointed or not
        self.task: asyncio.Task[None] | None = None
        self.pacer = Pacer()

    @property
    def status(self) -> PrefetchStatus:
        r = self.row
        total = r.small_size + r.big_size if r.big_size else 0
        done = total if r.state == DONE else (r.small_size + self.written if total else 0)
        return PrefetchStatus(
            folder=r.folder,
            name=r.name,
            state=r.state,
            bytes_done=done,
            bytes_total=total,
            error=r.error,
        )


class _Transient(Exception):
    """A failure worth another try later (wraps its cause's detail)."""


class PrefetchService:
    """The pre-staging jobs of one app: ``await open()`` resumes the
    unfinished ones, ``await close()`` stops them (their journal stays)."""

    def __init__(
        self,
        settings: Settings,
        session: DeviceSession,
        cache: ModelCache | None,
        gate: ReleaseGate,
        transfers: Transfers,
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.session = session
        self.cache = cache
        self.transfers = transfers
        self.gate = gate
        self.events = events
        self._journal: _Journal | None = None
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._starting = asyncio.Lock()

    async def open(self) -> None:
        if self.cache is None:
            return
        self._journal = await asyncio.to_thread(_Journal, self.settings.state_dir / JOURNAL_FILE)
        for row in await asyncio.to_thread(self._journal.unfinished):
            log.info("resuming the pre-staging of %s/%s", row.folder, row.name)
            self._spawn(_Job(row))

    async def close(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)

    async def __aenter__(self) -> PrefetchService:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_journal(self) -> _Journal:
        if self._journal is None:
            raise Conflict("pre-staging needs a model cache (EDGELOADER_CACHE_DIR)")
        return self._journal

    async def start(self, folder: str, name: str) -> PrefetchStatus:
        """Starts pre-staging ``folder/name`` (or says how the running one is)."""
        journal = self._require_journal()
        async with self._starting:  # two callers at once start one job
            job = self._jobs.get((folder, name))
            if job is not None and job.task is not None and not job.task.done():
                return job.status
            row = await asyncio.to_thread(journal.get, folder, name)
            row = replace(row, state=RUNNING, error=None) if row else _Row(folder, name, RUNNING)
            await asyncio.to_thread(journal.save, row)
            job = _Job(row)
            self._spawn(job)
        log.info("pre-staging %s/%s", folder, name)
        return job.status

    async def status(self, folder: str, name: str) -> PrefetchStatus:
        journal = self._require_journal()
        job = self._jobs.get((folder, name))
        if job is not None:
            return job.status
        row = await asyncio.to_thread(journal.get, folder, name)
        if row is None:
            raise NotFound(f"{folder}/{name} has not been pre-staged")
        return _Job(row).status

    def _spawn(self, job: _Job) -> None:
        self._jobs[(job.row.folder, job.row.name)] = job
        job.task = asyncio.create_task(self._run(job))

    # -- a job ----------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        wait, restarts = FIRST_WAIT, 0
        while True:
            try:
                await self._wait_for_login(job)
                await self._download(job)
                return
            except ObjectChanged as exc:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    await self._end(job, FAILED, exc.detail)
                    return
                log.info("%s/%s changed on the CDN; starting over", job.row.folder, job.row.name)
                await self._forget(job)
            except DeviceNotLoggedIn:
                continue
            except _Transient as exc:
                await self._set(job, WAITING, str(exc))
                log.warning(
                    "pre-staging %s/%s: %s; trying again in %.0f s",
                    job.row.folder,
                    job.row.name,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(2 * wait, MAX_WAIT)
            except (NotFound, IntegrityError, DecryptionError, Conflict) as exc:
                await self._end(job, FAILED, exc.detail)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("pre-staging %s/%s failed", job.row.folder, job.row.name)
                detail = exc.detail if isinstance(exc, EdgeloaderError) else str(exc)
                await self._end(job, FAILED, detail)
                return

    def _logged_in(self) -> bool:
        return self.session.api.credentials is not None

    async def _wait_for_login(self, job: _Job) -> None:
        if self._logged_in():
            return
        await self._set(job, WAITING, "the device is not logged in upstream")
        while True:  # the session offers no signal; a cheap look once a second
            if self._logged_in():
                return
            await asyncio.sleep(LOGIN_POLL)

    async def _download(self, job: _Job) -> None:
        assert self.cache is not None
        folder, name = job.row.folder, job.row.name
        try:
            small = await self.session.fetch_small(folder, crypto.small_name(name))
            artifact = await self.gate.artifact(
                lambda file_name: self.session.fetch_small("", file_name), f"{folder}/{name}"
            )
        except IntegrityError as exc:
            if exc.reason == "unavailable":
                raise _Transient(exc.detail) from exc
            raise
        except (NotFound, DeviceNotLoggedIn):
            raise
        except EdgeloaderError as exc:
            raise _Transient(exc.detail) from exc
        tag = cache_tag(small)
        cached = await asyncio.to_thread(self.cache.lookup, folder, name)
        if cached is not None and cached.matches(small):
            size = await asyncio.to_thread(lambda: cached.path.stat().st_size)
            job.row = replace(job.row, tag=tag, small_size=len(small), big_size=size, good=size)
            await self._end(job, DONE, None)
            return
        if job.row.tag != tag:
            await self._forget(job)
            job.row = replace(job.row, tag=tag)
        partial = await asyncio.to_thread(self.cache.partial, folder, name, tag)
        if partial is None:
            raise Conflict(f"the cache folder of {folder}/{name} cannot be written")
        try:
            await self._fetch(job, partial, small, artifact)
            await self._verify(job, partial, small, artifact)
        except BaseException:
            partial.close()
            raise

    async def _fetch(
        self, job: _Job, partial: PartialEntry, small: bytes, artifact: Artifact | None
    ) -> None:
        row = job.row
        fmt = crypto.detect_format(small[: crypto.FORMAT_PREFIX])
        # A resumed v2 file needs its header, which only a tiny resource lacks.
        keep = row.good if fmt == 1 or len(small) >= crypto.V2_HEADER_SIZE else 0
        good = await asyncio.to_thread(partial.open, keep)
        if good != keep:  # the file lost what the journal counted: start over
            good = await asyncio.to_thread(partial.open, 0)
        download = Download(
            await self._cdn(),
            self.transfers,
            row.folder,
            crypto.big_name(row.name),
            alignment=Alignment.after(small),
            start=good,
            size=row.big_size if good else None,
            etag=row.etag if good else None,
        )
        try:
            try:
                await download.open()
            except EdgeloaderError as exc:
                if isinstance(exc, (NotFound, ObjectChanged)):
                    raise
                raise _Transient(exc.detail) from exc
            assert download.size is not None
            if artifact is not None:
                artifact.check(fmt=fmt, size=len(small) + download.size)
            job.row = row = replace(
                row,
                state=RUNNING,
                etag=download.etag or "",
                small_size=len(small),
                big_size=download.size,
                good=good,
                error=None,
            )
            job.written = good
            await self._save(job)
            self._publish(job, force=True)
            total = len(small) + download.size
            # v2 bytes are released chunk by chunk once opened; a file complete
            # before a restart holds only chunks opened then.
            chunks = _V2Chunks(small, total, good) if fmt == 2 and good < download.size else None
            synced_at = time.monotonic()
            try:
                async for data in download.chunks():
                    for piece in chunks.feed(data) if chunks else (data,):
                        await asyncio.to_thread(partial.write, piece)
                        job.written += len(piece)
                    if job.written - job.row.good >= CHECKPOINT_BYTES or (
                        job.written > job.row.good
                        and time.monotonic() - synced_at >= CHECKPOINT_SECONDS
                    ):
                        await self._checkpoint(job, partial)
                        synced_at = time.monotonic()
                    self._publish(job)
            except EdgeloaderError as exc:
                if isinstance(exc, (DecryptionError, ObjectChanged, NotFound)):
                    raise
                raise _Transient(exc.detail) from exc
            finally:
                # What arrived in order is good to keep, whatever ended the read.
                with contextlib.suppress(OSError):
                    await self._checkpoint(job, partial)
            if chunks is not None:
                chunks.finish()
        finally:
            download.close()

    async def _verify(
        self, job: _Job, partial: PartialEntry, small: bytes, artifact: Artifact | None
    ) -> None:
        await self._set(job, VERIFYING, None)
        total = job.row.small_size + job.row.big_size
        whole = CiphertextHash(artifact) if artifact is not None else None
        chunk_size = self.settings.chunk_size

        def digest() -> tuple[str, bytes, bytes, int]:
            own = crypto.Sha256()
            if whole is not None:
                whole.update(small)
            head, tail, size = small, small[-crypto.V1_TAIL :], 0
            for data in partial.chunks(chunk_size):
                own.update(data)
                if whole is not None:
                    whole.update(data)
                if len(head) < crypto.V2_HEADER_SIZE:
                    head += data[: crypto.V2_HEADER_SIZE]
                tail = (tail + data)[-crypto.V1_TAIL :]
                size += len(data)
            return own.hexdigest(), head, tail, size

        sha256, head, tail, size = await asyncio.to_thread(digest)
        if size != job.row.big_size:
            await self._forget(job)
            raise _Transient(f"the partial file held {size} of {job.row.big_size} bytes")
        fmt = crypto.detect_format(small[: crypto.FORMAT_PREFIX])
        # v1: the padding of the last block (v2's final chunk was opened as final).
        crypto.resource_plaintext_length(fmt, head, total, tail)
        if whole is not None:
            whole.verify()
        await asyncio.to_thread(partial.commit, sha256)
        job.written = job.row.big_size
        job.row = replace(job.row, good=job.row.big_size)
        await self._end(job, DONE, None)
        log.info("pre-staged %s/%s: %d bytes", job.row.folder, job.row.name, total)

    async def _cdn(self) -> Any:
        try:
            return await self.session.cdn()
        except (DeviceNotLoggedIn, NotFound):
            raise
        except EdgeloaderError as exc:
            raise _Transient(exc.detail) from exc

    # -- state ----------------------------------------------------------------------------

    async def _checkpoint(self, job: _Job, partial: PartialEntry) -> None:
        if job.written <= job.row.good:
            return
        written = job.written
        await asyncio.to_thread(partial.sync)  # the bytes first, then the journal
        job.row = replace(job.row, good=written)
        await self._save(job)

    async def _save(self, job: _Job) -> None:
        if self._journal is not None:
            await asyncio.to_thread(self._journal.save, job.row)

    async def _set(self, job: _Job, state: str, error: str | None) -> None:
        row = replace(job.row, state=state, error=error)
        if self._journal is not None:
            await asyncio.to_thread(self._journal.save, row)
        # Shown only once saved, and nothing is awaited after a final state:
        # a caller who sees "done" or "failed" finds the job over.
        job.row = row
        self._publish(job, force=True)

    async def _end(self, job: _Job, state: str, error: str | None) -> None:
        if state == FAILED:
            log.warning("pre-staging %s/%s failed: %s", job.row.folder, job.row.name, error)
            await self._forget(job)
        await self._set(job, state, error)

    async def _forget(self, job: _Job) -> None:
        """Drops the partial file and what the journal knew of it."""
        if self.cache is not None and job.row.tag:
            path = PartialEntry(self.cache.root / job.row.folder / job.row.name, job.row.tag).path
            await asyncio.to_thread(ModelCache.discard, path)
        job.row = replace(job.row, tag="", etag="", big_size=0, good=0)
        job.written = 0
        await self._save(job)

    def _publish(self, job: _Job, *, force: bool = False) -> None:
        if self.events is None or not (force or job.pacer.due()):
            return
        if force:
            job.pacer.sent()
        self.events.publish(Event(PREFETCH, job.status.wire()))


class _V2Chunks:
    """The big part's bytes, released only in whole v2 chunks whose tags
    verified (chunks span small and big parts: ``small ‖ big`` is one v2
    file of ``total`` bytes). ``start`` is where the big part resumes: 0,
    or the end of a verified chunk."""

    def __init__(self, small: bytes, total: int, start: int) -> None:
        self._key = crypto.resource_key()
        self._small = len(small)
        self._total = total
        self._base = self._small + start if start else 0  # ct offset of _pending[0]
        self._pending = bytearray() if start else bytearray(small)
        self._header = small[: crypto.V2_HEADER_SIZE]
        self._index: int | None = None
        self.finished = False

    def _first_index(self) -> int:
        if self._base == 0:
            return 0
        unit = (1 << self._header[6]) + 16
        index = (self._base - crypto.V2_HEADER_SIZE) // unit
        if crypto.v2_chunk_range(self._header, self._total, index)[0] != self._base:
            raise DecryptionError()
        return index

    def feed(self, data: bytes) -> Iterable[bytes]:
        if self.finished:
            if data:
                raise DecryptionError()  # bytes after the final chunk
            return ()
        self._pending += data
        if len(self._header) < crypto.V2_HEADER_SIZE:
            if len(self._pending) < crypto.V2_HEADER_SIZE:
                return ()
            self._header = bytes(self._pending[: crypto.V2_HEADER_SIZE])
        if self._index is None:
            self._index = self._first_index()
        out = []
        while not self.finished:
            start, end, final = crypto.v2_chunk_range(self._header, self._total, self._index)
            if self._base + len(self._pending) < end:
                break
            body = self._pending[start - self._base : end - self._base]
            crypto.v2_open_chunk(self._key, self._header, self._index, final, body)
            release = max(self._base, self._small)
            if end > release:
                out.append(bytes(self._pending[release - self._base : end - self._base]))
            del self._pending[: end - self._base]
            self._base, self._index, self.finished = end, self._index + 1, final
        if self.finished and self._pending:
            raise DecryptionError()
        return out

    def finish(self) -> None:
        if not self.finished:
            raise DecryptionError()
