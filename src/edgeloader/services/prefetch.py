"""Pre-staging: a resource's ciphertext downloaded into the model cache in
the background, so that a later load needs only the Resource API.

A job is journaled in SQLite and resumes after a restart from its last
durable checkpoint; docs/architecture.md ("Pre-staging") gives the tour:
the journal, checkpoints, resumption and the checks before a partial file
becomes a cache entry.

Jobs are bounded: at most ``prefetch_max_jobs`` unfinished at once, and
``prefetch_max_jobs_per_caller`` of them started by one identity (429
past either); a finished job leaves memory at once and its journal row
stays until :data:`FINISHED_KEPT` newer ones have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
    QueueFull,
)
from edgeloader.events import PREFETCH, Event, EventBus, Pacer
from edgeloader.services.cache import ModelCache, PartialEntry, cache_tag
from edgeloader.services.download import Alignment, Download, Transfers
from edgeloader.services.load import small_part
from edgeloader.services.manifest import Release, ReleaseGate, Verified
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
#: Finished jobs whose state the journal keeps, newest first.
FINISHED_KEPT = 1000

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

    @property
    def key(self) -> tuple[str, str]:
        return self.folder, self.name


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

    def prune(self, keep: int) -> None:
        """Keeps the ``keep`` newest finished rows."""
        with self._db.transaction() as db:
            db.execute(
                "DELETE FROM prefetch WHERE state IN (?, ?) AND rowid NOT IN"
                " (SELECT rowid FROM prefetch WHERE state IN (?, ?)"
                " ORDER BY updated DESC LIMIT ?)",
                (DONE, FAILED, DONE, FAILED, keep),
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
    def __init__(self, row: _Row, owner: str = "") -> None:
        self.row = row
        self.owner = owner  # who started it; "" for a job resumed at start-up
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

    async def start(self, folder: str, name: str, owner: str) -> PrefetchStatus:
        """Starts pre-staging ``folder/name`` for ``owner`` (or says how the
        running one is); :class:`QueueFull` past the bounds."""
        journal = self._require_journal()
        async with self._starting:  # two callers at once start one job
            job = self._jobs.get((folder, name))
            if job is not None and job.task is not None and not job.task.done():
                return job.status
            self._check_room(owner)
            row = await asyncio.to_thread(journal.get, folder, name)
            row = replace(row, state=RUNNING, error=None) if row else _Row(folder, name, RUNNING)
            await asyncio.to_thread(journal.save, row)
            job = _Job(row, owner)
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

    def _check_room(self, owner: str) -> None:
        s = self.settings
        if len(self._jobs) >= s.prefetch_max_jobs:
            raise QueueFull(f"{s.prefetch_max_jobs} pre-staging jobs are unfinished; retry later")
        if sum(job.owner == owner for job in self._jobs.values()) >= (
            s.prefetch_max_jobs_per_caller
        ):
            raise QueueFull(
                f"you have {s.prefetch_max_jobs_per_caller} unfinished pre-staging jobs; "
                "retry when one has finished"
            )

    def _spawn(self, job: _Job) -> None:
        key = job.row.key
        self._jobs[key] = job
        job.task = asyncio.create_task(self._run(job))
        job.task.add_done_callback(lambda _: self._left(job))

    def _left(self, job: _Job) -> None:
        """A finished job leaves memory; its state is in the journal."""
        if self._jobs.get(job.row.key) is job:
            del self._jobs[job.row.key]

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
            small = await small_part(self.session.fetch_small, folder, name)
            release = await self.gate.release(self.session.fetch_small, folder, name)
        except IntegrityError as exc:
            if exc.reason == "unavailable":
                raise _Transient(exc.detail) from exc
            raise
        except (NotFound, DeviceNotLoggedIn):
            raise
        except EdgeloaderError as exc:
            raise _Transient(exc.detail) from exc
        tag = cache_tag(small)
        identity = release.identity if release is not None else None
        cached = await asyncio.to_thread(self.cache.lookup, folder, name)
        if cached is not None and cached.matches(small, identity):
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
            written = await self._fetch(job, partial, small, release)
            await self._commit(job, partial, small, release, written)
        except BaseException:
            partial.close()
            raise

    async def _fetch(
        self, job: _Job, partial: PartialEntry, small: bytes, release: Release | None
    ) -> _Written:
        """Reads the big part into the partial file, from what the journal
        kept (checked again first), writing only checked bytes."""
        row = job.row
        good = await asyncio.to_thread(partial.open, row.good)
        written: _Written | None = None
        if good:
            # The file on the box's disk is not trusted: what it holds is
            # checked again, and only what passes, from the start, is kept.
            total = len(small) + row.big_size
            written = _Written(small, total, release)
            try:
                kept = await asyncio.to_thread(written.replay, partial, good)
            except (IntegrityError, DecryptionError) as exc:
                log.warning("the pre-staged part of %s/%s fails its check: %s", *row.key, exc)
                kept = 0
            if kept != good:
                good = await asyncio.to_thread(partial.open, kept)
                # Checked again from a fresh start, which ends on a boundary.
                written = _Written(small, total, release) if good else None
                if written is not None:
                    await asyncio.to_thread(written.replay, partial, good)
        if release is not None:
            segment = release.artifact.segment
            alignment, hold = Alignment.segments(small, segment), segment
        else:
            alignment, hold = Alignment.after(small), 0
        download = Download(
            await self._cdn(),
            self.transfers,
            row.folder,
            crypto.big_name(row.name),
            alignment=alignment,
            start=good,
            size=row.big_size if good else None,
            etag=row.etag if good else None,
            hold=hold,
        )
        try:
            try:
                await download.open()
            except EdgeloaderError as exc:
                if isinstance(exc, (NotFound, ObjectChanged)):
                    raise
                raise _Transient(exc.detail) from exc
            assert download.size is not None
            total = len(small) + download.size
            if release is not None:
                fmt = crypto.detect_format(small[: crypto.FORMAT_PREFIX])
                release.check(fmt=fmt, size=total)
            if written is None:
                written = _Written(small, total, release)
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
            synced_at = time.monotonic()
            try:
                async for data in download.chunks():
                    if piece := written.feed(data):
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
                if isinstance(exc, (DecryptionError, IntegrityError, ObjectChanged, NotFound)):
                    raise
                raise _Transient(exc.detail) from exc
            finally:
                # What arrived in order and passed its check is good to keep,
                # whatever ended the read.
                with contextlib.suppress(OSError):
                    await self._checkpoint(job, partial)
            written.finish()
            return written
        finally:
            download.close()

    async def _commit(
        self,
        job: _Job,
        partial: PartialEntry,
        small: bytes,
        release: Release | None,
        written: _Written,
    ) -> None:
        """The checked file becomes the cache entry: named by the release's
        identity, or by its own digest (computed as it was written)."""
        await self._set(job, VERIFYING, None)
        total = job.row.small_size + job.row.big_size
        if written.size != job.row.big_size:
            await self._forget(job)
            raise _Transient(f"the partial file held {written.size} of {job.row.big_size} bytes")
        fmt = crypto.detect_format(small[: crypto.FORMAT_PREFIX])
        # v1: the padding of the last block (v2's final chunk was checked as final).
        crypto.resource_plaintext_length(fmt, written.head, total, written.tail)
        if release is not None:
            await asyncio.to_thread(partial.commit, release.identity, True)
        else:
            await asyncio.to_thread(partial.commit, written.digest())
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
        if self._journal is not None:
            await asyncio.to_thread(self._journal.prune, FINISHED_KEPT)

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


class _Written:
    """What of ``small ‖ big`` may be written to the partial file, fed from
    the start of the ciphertext: under a release, whole verified segments;
    without one, v2's whole chunks whose tags verified, and in v1 (no MAC)
    every byte. Only the big part's share comes out. It also keeps the
    start and end of what came out and, without a release, its digest,
    which will name the entry."""

    def __init__(self, small: bytes, total: int, release: Release | None) -> None:
        self._small = len(small)
        self._total = total
        self._release = release
        self._gate: Verified | crypto.ChunkGate | None = None
        self._v2 = crypto.detect_format(small[: crypto.FORMAT_PREFIX]) == 2
        self._pending = b""  # v2 without a release: bytes before the header is whole
        self._released = 0  # ciphertext bytes that came out of the check
        self._own = crypto.Sha256() if release is None else None
        self.size = 0  # big-part bytes that came out
        self.head = b""
        self.tail = small[-crypto.V1_TAIL :]
        if release is not None:
            self._gate = release.gate()
        self._feed_ciphertext(small)

    def _feed_ciphertext(self, data: bytes) -> bytes:
        if self._release is None and self._v2 and self._gate is None:
            self._pending += data
            if len(self._pending) < crypto.V2_HEADER_SIZE:
                return b""
            header = self._pending[: crypto.V2_HEADER_SIZE]
            self._gate = crypto.ChunkGate(crypto.resource_key(), header, self._total)
            data, self._pending = self._pending, b""
        out = self._gate.update(data) if self._gate is not None else data
        if not out:
            return b""
        if len(self.head) < crypto.V2_HEADER_SIZE:
            self.head += out[: crypto.V2_HEADER_SIZE - len(self.head)]
        big = out[max(0, self._small - self._released) :]
        self._released += len(out)
        if big:
            self.size += len(big)
            self.tail = (self.tail + big)[-crypto.V1_TAIL :]
            if self._own is not None:
                self._own.update(big)
        return big

    def feed(self, big: bytes) -> bytes:
        """The big part's next bytes in; what may be written out."""
        return self._feed_ciphertext(big)

    def replay(self, partial: PartialEntry, good: int) -> int:
        """Checks the partial file's first ``good`` bytes again (blocking);
        returns how many of them passed, from the start."""
        passed = 0
        for data in partial.chunks(1 << 20, good):
            passed += len(self._feed_ciphertext(data))
        return passed

    def finish(self) -> None:
        if self._pending or (self._release is None and self._v2 and self._gate is None):
            raise DecryptionError()  # a v2 file too short for its header
        if self._gate is not None:
            self._gate.finish()

    def digest(self) -> str:
        assert self._own is not None
        return self._own.hexdigest()
