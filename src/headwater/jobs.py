"""Jobs: ingestion runs a user starts, pauses, resumes and cancels (DESIGN §6, seed 003).

    queued ─► running ─► succeeded | failed
              running ─► pausing ─► paused ─► queued (resume) | cancelled
              running ─► cancelling ─► cancelled      (pausing ─► cancelling | succeeded | failed too)
              running ─► queued                       (the server stopped mid-run: run it again)
    queued ─► paused | cancelled                      (a job that never started moves at once)

``TRANSITIONS`` is that drawing as data; every status write is checked against it. Pausing and
cancelling are cooperative: the request writes PAUSING/CANCELLING, the runner stops the pipeline
and only then writes PAUSED/CANCELLED. Nothing is lost by stopping mid-run: the document pipeline
is incremental and crash-safe, so the next run skips what is done and redoes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import structlog

from headwater import registry
from headwater.adapters._thread import OwnThread
from headwater.adapters.sqlite import enable_wal
from headwater.config import Settings
from headwater.errors import ConfigError, EmbedderUnavailable, HeadwaterError, InputError
from headwater.events import Event, to_dict
from headwater.models import Job, JobEvent, JobStatus
from headwater.observability import get_logger, span
from headwater.pipeline.ratelimit import CircuitOpenError
from headwater.ports import JobStore

S = JobStatus
log = get_logger("headwater.jobs")
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED}),
    S.RUNNING: frozenset({S.PAUSING, S.CANCELLING, S.SUCCEEDED, S.FAILED, S.QUEUED}),
    S.PAUSING: frozenset({S.PAUSED, S.CANCELLING, S.SUCCEEDED, S.FAILED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.CANCELLED: frozenset(),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
}
TERMINAL = frozenset(status for status, moves in TRANSITIONS.items() if not moves)
# Where a job left by a crashed server goes: the runner that should have settled it is gone.
RECOVERY = {S.RUNNING: S.QUEUED, S.PAUSING: S.PAUSED, S.CANCELLING: S.CANCELLED}
# Fields a job's spec must have, per kind.
REQUIRED_SPEC: dict[str, tuple[str, ...]] = {"docs": ("source",), "replay": ()}


class JobNotFound(HeadwaterError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class IllegalTransition(HeadwaterError):
    """A status change the table forbids (HTTP 409)."""

    def __init__(self, job_id: str, current: JobStatus, to: JobStatus, message: str | None = None) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is final"
        super().__init__(
            message or f"job {job_id}: cannot go from {current} to {to} (from {current}: {allowed})"
        )
        self.job_id, self.current, self.to = job_id, current, to


class StaleJobStatus(IllegalTransition):
    """A compare-and-set lost: the status changed since the caller read it (HTTP 409)."""

    def __init__(self, job_id: str, current: JobStatus, to: JobStatus, expected: JobStatus) -> None:
        message = f"job {job_id}: not moved to {to}: its status changed meanwhile ({expected} → {current})"
        super().__init__(job_id, current, to, message)
        self.expected = expected


def check_transition(job_id: str, current: JobStatus, to: JobStatus) -> None:
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(job_id, current, to)


def validate_spec(kind: str, spec: dict[str, Any]) -> None:
    if kind not in REQUIRED_SPEC:
        msg = f"unknown job kind {kind!r}: one of {sorted(REQUIRED_SPEC)}"
        raise InputError(msg, field="kind")
    for name in REQUIRED_SPEC[kind]:
        if not isinstance(spec.get(name), str) or not spec[name]:
            msg = f"a {kind} job needs {name!r} (a non-empty string) in its spec"
            raise InputError(msg, field=name)
    ids = spec.get("ids")
    if (
        kind == "replay"
        and ids is not None
        and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids))
    ):
        msg = "a replay job's 'ids' must be a list of dead-letter ids (integers), or absent for all"
        raise InputError(msg, field="ids")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- the SQLite job store ------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    spec TEXT NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT,
    progress TEXT NOT NULL DEFAULT '{}', runs INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
_JOB_COLUMNS = "id, kind, spec, priority, status, reason, progress, runs, created_at, updated_at"


def job_store_url(settings: Settings) -> str:
    """``jobs.db`` next to ``state.db``: journal writes never wait for a pipeline's transaction."""
    return f"sqlite:///{settings.home.resolve()}/jobs.db"


class SQLiteJobStore:
    """JobStore on one SQLite file in WAL mode with ``synchronous=FULL`` (a status survives a power cut)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or not parts.path:
            msg = f"job store URL {url!r} must look like sqlite:///path/to/jobs.db"
            raise ConfigError(msg)
        self.url = url
        self.path = Path(parts.path)
        self._thread = OwnThread("sqlite-jobs")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        def _open() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            enable_wal(db)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.executescript(SCHEMA)
            self._db = db

        if self._db is None:
            self._thread = OwnThread("sqlite-jobs")  # a closed store can be opened again
            await self._thread.call(_open)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._thread.call(_close)
        self._thread.shutdown()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            msg = f"job store {self.url} used before open()"
            raise RuntimeError(msg)
        return self._db

    async def create(self, kind: str, spec: dict[str, Any], priority: int = 0) -> str:
        job_id = uuid.uuid4().hex
        now = _now()

        def _create() -> None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, '{{}}', 0, ?, ?)",
                    (job_id, kind, json.dumps(spec), priority, S.QUEUED.value, now, now),
                )
                self._append(job_id, [_status_event(None, S.QUEUED, None)], now)

        await self._thread.call(_create)
        return job_id

    async def get(self, job_id: str) -> Job | None:
        return await self._thread.call(self._get, job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    async def transition(
        self, job_id: str, to: JobStatus, reason: str | None = None, *, expected: JobStatus | None = None
    ) -> Job:
        def _transition() -> Job:
            now = _now()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")  # the read and the write see the same status
                row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise JobNotFound(job_id)
                current = JobStatus(row[0])
                if expected is not None and current != expected:
                    raise StaleJobStatus(job_id, current, to, expected)
                check_transition(job_id, current, to)
                self.db.execute(
                    "UPDATE jobs SET status = ?, reason = ?, updated_at = ?, runs = runs + ? "
                    "WHERE id = ? AND status = ?",
                    (to.value, reason, now, int(to is S.RUNNING), job_id, current.value),
                )
                self._append(job_id, [_status_event(current, to, reason)], now)
            job = self._get(job_id)
            assert job is not None
            return job

        return await self._thread.call(_transition)

    async def append_events(
        self, job_id: str, events: Sequence[dict[str, Any]], progress: dict[str, int] | None = None
    ) -> int:
        def _append_events() -> int:
            now = _now()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                if self.db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    raise JobNotFound(job_id)
                if progress is not None:
                    self.db.execute(
                        "UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id)
                    )
                return self._append(job_id, events, now)

        return await self._thread.call(_append_events)

    def _append(self, job_id: str, events: Sequence[dict[str, Any]], now: str) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM job_events WHERE job_id = ?", (job_id,)).fetchone()
        last = int(row[0] or 0)
        self.db.executemany(
            "INSERT INTO job_events VALUES (?, ?, ?, ?)",
            [(job_id, last + i, now, json.dumps(e)) for i, e in enumerate(events, start=1)],
        )
        return last + len(events)

    async def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]:
        def _events() -> list[JobEvent]:
            rows = self.db.execute(
                "SELECT seq, at, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            )
            return [JobEvent(job_id=job_id, seq=s, at=at, data=json.loads(d)) for s, at, d in rows]

        return await self._thread.call(_events)

    async def counts(self) -> dict[JobStatus, int]:
        def _counts() -> dict[JobStatus, int]:
            rows = self.db.execute("SELECT status, count(*) FROM jobs GROUP BY status")
            return {**dict.fromkeys(JobStatus, 0), **{JobStatus(status): n for status, n in rows}}

        return await self._thread.call(_counts)

    async def delete(self, job_id: str) -> None:
        def _delete() -> None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise JobNotFound(job_id)
                status = JobStatus(row[0])
                if status not in TERMINAL:
                    msg = f"job {job_id}: only a finished job can be deleted; this one is {status}"
                    raise IllegalTransition(job_id, status, status, msg)
                self.db.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
                self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

        await self._thread.call(_delete)

    async def list(self, statuses: Sequence[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        def _list() -> list[Job]:
            where, args = "", [s.value for s in statuses or ()]
            if statuses is not None:
                where = f"WHERE status IN ({','.join('?' * len(args))})"
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY priority DESC, seq LIMIT ?"
            return [_job_from_row(row) for row in self.db.execute(sql, (*args, limit))]

        return await self._thread.call(_list)


def _status_event(previous: JobStatus | None, status: JobStatus, reason: str | None) -> dict[str, Any]:
    return {"type": "JobStatusChanged", "previous": previous, "status": status, "reason": reason}


def _job_from_row(row: Sequence[Any]) -> Job:
    job_id, kind, spec, priority, status, reason, progress, runs, created_at, updated_at = row
    return Job(
        id=job_id, kind=kind, spec=json.loads(spec), priority=priority, status=JobStatus(status),
        reason=reason, progress=json.loads(progress), runs=runs, created_at=created_at, updated_at=updated_at,
    )  # fmt: skip


# --- the service -----------------------------------------------------------------------------------

Runner = Callable[[Job], AsyncIterator[Event]]
"""Runs one job: an event stream (``stream_events()``) that ends when the job's work is done."""


def docs_runner(settings: Settings) -> Runner:
    def run(job: Job) -> AsyncIterator[Event]:
        from headwater.bootstrap import build_document_pipeline

        return build_document_pipeline(settings, str(job.spec["source"])).stream_events()

    return run


def replay_runner(settings: Settings) -> Runner:
    """Republishes dead-lettered bus messages, then re-runs dead-lettered documents.

    The letters are marked replayed when the run starts: a replay paused midway is finished by
    the next ``ingest`` of its source (the documents stay claimed), not by resuming this job.
    """

    async def run(job: Job) -> AsyncIterator[Event]:
        from headwater.bootstrap import build_document_pipeline
        from headwater.pipeline.index import claim_replays
        from headwater.stream_bootstrap import replay_messages

        ids = job.spec.get("ids")
        await replay_messages(settings, ids)
        for source, paths in (await claim_replays(settings, ids)).items():
            pipeline = build_document_pipeline(settings, source, only=paths)
            async with contextlib.aclosing(pipeline.stream_events()) as events:  # see iter_results
                async for event in events:
                    yield event

    return run


def build_job_service(settings: Settings, *, observers: Sequence[Callable[[Event], None]] = ()) -> JobService:
    """The job service the server and ``headwater jobs`` use, on the home's ``jobs.db``."""
    store = cast(JobStore, registry.create("job_store", job_store_url(settings)))
    runners = {"docs": docs_runner(settings), "replay": replay_runner(settings)}
    return JobService(store, runners, max_concurrent=settings.max_concurrent_jobs, observers=observers)


_COUNTED = {"DocumentCompleted": "completed", "DocumentSkipped": "skipped", "DocumentFailed": "failed",
            "DocumentDeleted": "deleted"}  # fmt: skip


class _Journal:
    """Group commit of one run's events: while one write is in flight the next events gather,
    so a slow disk batches more instead of slowing the pipeline."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        written: Callable[[], None],
        observers: Sequence[Callable[[Event], None]] = (),
    ) -> None:
        self.store, self.job_id, self._written, self._observers = store, job_id, written, observers
        self.pending: list[dict[str, Any]] = []
        self.progress: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._loop())

    def add(self, event: Event) -> None:
        if self._task.done():
            self._task.result()  # a failed journal write stops the run with its error
        for observe in self._observers:
            observe(event)
        data = to_dict(event)
        kind = data.get("type", "")
        if kind == "RunStarted":
            self.progress = dict.fromkeys(_COUNTED.values(), 0)
        if kind in _COUNTED:
            self.progress[_COUNTED[kind]] = self.progress.get(_COUNTED[kind], 0) + 1
        if kind == "DocumentFailed":  # the DLQ has the whole context; the log says where to look
            log.warning("document failed", doc_id=data.get("doc_id"), stage=data.get("stage"),
                        error_type=data.get("error_type"), error=data.get("message"))  # fmt: skip
        if kind == "BatchProgress" and data.get("estimated_total") is not None:
            self.progress["total"] = int(data["estimated_total"])
        if kind == "RunCompleted" and "documents_seen" in data:
            self.progress["total"] = int(data["documents_seen"])
        self.pending.append(data)
        self._wake.set()

    async def _loop(self) -> None:
        while self.pending or not self._closing:
            if not self.pending:
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self.pending = self.pending, []
            await self.store.append_events(self.job_id, batch, dict(self.progress))
            self._written()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await self._task


@dataclass
class _Active:
    task: asyncio.Task[None]
    consumer: asyncio.Task[bool] | None = None


class JobService:
    """Runs queued jobs by priority, at most ``max_concurrent`` at once, and settles each one's
    status when its run ends, stops or fails.

    A run is stopped by cancelling the task that consumes its event stream (the pipeline is
    crash-safe, so any point is a safe point). Requests from other processes (``headwater jobs
    pause`` on the same home) are seen by polling the store every ``poll_seconds``. One server
    per home: ``start`` treats every running job as left behind by a crash.
    """

    def __init__(
        self,
        store: JobStore,
        runners: Mapping[str, Runner],
        *,
        max_concurrent: int = 1,
        poll_seconds: float = 1.0,
        observers: Sequence[Callable[[Event], None]] = (),
    ) -> None:
        if max_concurrent < 1:
            msg = f"max_concurrent must be at least 1, not {max_concurrent}"
            raise ConfigError(msg)
        self.store = store
        self.runners = dict(runners)
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self.observers = tuple(observers)  # see every event of every run (metrics)
        self._active: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # set and replaced on every journal write (followers wait on it)
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store only: enough for commands (pause, cancel …) from a second process."""
        await self.store.open()

    async def start(self) -> None:
        """Open the store, settle the jobs a crashed server left behind, and start dispatching."""
        await self.open()
        for job in await self.store.list(list(RECOVERY), limit=1_000_000):
            reason = f"recovered: the server stopped while the job was {job.status}"
            with contextlib.suppress(IllegalTransition):  # another process settled it meanwhile
                await self.store.transition(job.id, RECOVERY[job.status], reason, expected=job.status)
                log.warning("job recovered", job_id=job.id, was=job.status, now=RECOVERY[job.status])
        self._dispatcher = asyncio.create_task(self._dispatch())

    async def stop(self) -> None:
        """Stop dispatching; running jobs go back to the queue (paused/cancelled if so asked)."""
        self._closing = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        active = list(self._active.values())
        for run in active:
            if run.consumer is not None:
                run.consumer.cancel()
        await asyncio.gather(*(run.task for run in active), return_exceptions=True)
        await self.store.close()

    # -- commands ------------------------------------------------------------------------------
    async def submit(self, kind: str, spec: dict[str, Any], priority: int = 0) -> str:
        validate_spec(kind, spec)
        job_id = await self.store.create(kind, spec, priority)
        self._wake.set()
        return job_id

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list(self, statuses: Sequence[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        return await self.store.list(statuses, limit)

    async def counts(self) -> dict[JobStatus, int]:
        return await self.store.counts()

    async def delete(self, job_id: str) -> None:
        """Forget a finished job and its journal (what it indexed stays indexed)."""
        await self.store.delete(job_id)

    async def pause(self, job_id: str, reason: str = "paused by request") -> Job:
        """A queued job pauses at once; a running one goes PAUSING until its runner stops."""
        return await self._request(job_id, {S.QUEUED: S.PAUSED}, S.PAUSING, reason)

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        """Stops the job for good; what it already indexed stays indexed."""
        return await self._request(
            job_id, {S.QUEUED: S.CANCELLED, S.PAUSED: S.CANCELLED}, S.CANCELLING, reason
        )

    async def resume(self, job_id: str) -> Job:
        """A paused job goes back to the queue; its next run skips documents already done."""
        job = await self.get(job_id)
        if job.status is not S.PAUSED:  # the table allows running → queued, but only for recovery
            msg = f"job {job_id}: only a paused job can be resumed; this one is {job.status}"
            raise IllegalTransition(job_id, job.status, S.QUEUED, msg)
        job = await self.store.transition(job_id, S.QUEUED, "resumed", expected=S.PAUSED)
        self._wake.set()
        return job

    async def _request(
        self, job_id: str, direct: dict[JobStatus, JobStatus], otherwise: JobStatus, reason: str
    ) -> Job:
        for _ in range(3):  # a lost compare-and-set means the job moved: decide again
            job = await self.get(job_id)
            try:
                job = await self.store.transition(
                    job_id, direct.get(job.status, otherwise), reason, expected=job.status
                )
            except StaleJobStatus:
                continue
            self._stop_run(job_id)
            log.info("job change requested", job_id=job_id, status=job.status, reason=reason)
            return job
        msg = f"job {job_id}: its status kept changing; try again"
        raise HeadwaterError(msg)

    def _stop_run(self, job_id: str) -> None:
        run = self._active.get(job_id)
        if run is not None and run.consumer is not None:
            run.consumer.cancel()

    # -- following a job (the SSE stream) ----------------------------------------------------------
    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Journal events after ``after``, then new ones as they are written, until the job is final.

        Events written by another process are picked up within ``poll_seconds``.
        """
        while True:
            written = self._written
            # The status first: a job that ends between the two reads has its last events
            # (its final status change among them) read below, not lost after a "final" answer.
            final = (await self.get(job_id)).status in TERMINAL
            events = await self.store.events_after(job_id, after)
            for event in events:
                yield event
                after = event.seq
            if events:
                continue
            if final:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):  # not wait_for: see cpu_pool.CpuPool.run
                    await written.wait()

    def _notify(self) -> None:
        self._written.set()
        self._written = asyncio.Event()

    # -- dispatching and running ---------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._watch_active()
            await self._fill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def _fill(self) -> None:
        while len(self._active) < self.max_concurrent:
            queued = await self.store.list([S.QUEUED], limit=1)
            if not queued:
                return
            try:
                job = await self.store.transition(queued[0].id, S.RUNNING, expected=S.QUEUED)
            except IllegalTransition:
                continue  # cancelled or taken meanwhile
            self._notify()
            run = _Active(task=asyncio.create_task(self._run(job)))
            self._active[job.id] = run
            run.task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._active.pop(job_id, None)
        self._wake.set()
        self._notify()

    async def _watch_active(self) -> None:
        """Stop runs whose job another process asked to pause or cancel."""
        for job_id in list(self._active):
            job = await self.store.get(job_id)
            if job is not None and job.status in (S.PAUSING, S.CANCELLING):
                self._stop_run(job_id)

    async def _run(self, job: Job) -> None:
        # every log line of this run, the pipeline's included, carries the job's id
        with (
            structlog.contextvars.bound_contextvars(job_id=job.id, job_kind=job.kind),
            span("headwater.job", job_id=job.id, kind=job.kind, run=job.runs),
        ):
            log.info("job started", run=job.runs, priority=job.priority)
            await self._run_bound(job)

    async def _run_bound(self, job: Job) -> None:
        journal = _Journal(self.store, job.id, self._notify, self.observers)
        result: bool | BaseException = False  # True: the run finished its work; False: it was stopped
        if not self._closing:
            consumer = self._active[job.id].consumer = asyncio.create_task(self._consume(job, journal))
            try:
                result = await consumer
            except asyncio.CancelledError:
                if not consumer.cancelled():
                    raise
            except Exception as exc:  # noqa: BLE001 (whatever ends a run is the job's outcome, with its reason)
                result = exc
        try:
            await journal.close()
        except Exception as exc:  # noqa: BLE001 (a run whose journal was lost did not succeed)
            result = exc if result is True else result
        await self._settle(job.id, result)

    async def _consume(self, job: Job, journal: _Journal) -> bool:
        """Journal the run's events; True when it ends by itself, False when the embedder's circuit
        opened (the job then pauses with that reason instead of failing document after document)."""
        runner = self.runners.get(job.kind)
        if runner is None:
            msg = f"job {job.id}: this server cannot run {job.kind!r} jobs"
            raise ConfigError(msg)
        events = runner(job)
        try:
            try:
                async for event in events:
                    journal.add(event)
                    _stop_if_embedder_unavailable(event)
            except EmbedderUnavailable as exc:
                reason = f"embedder unavailable: {exc}"
                await journal.close()  # the events that led here come before the status change
                await self.store.transition(job.id, S.PAUSING, reason, expected=S.RUNNING)
                return False
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()  # stops the pipeline and closes its adapters
        return True

    async def _settle(self, job_id: str, result: bool | BaseException) -> None:
        """Write the status that ends this run, from how it ended and what was asked meanwhile."""
        for _ in range(3):
            job = await self.get(job_id)
            to, reason = _outcome(job, result)
            try:
                await self.store.transition(job_id, to, reason, expected=job.status)
            except StaleJobStatus:
                continue
            log.log(
                logging.ERROR if to is S.FAILED else logging.INFO, "job settled", status=to, reason=reason
            )
            return
        msg = f"job {job_id}: could not settle its status after its run ended"
        raise HeadwaterError(msg)


def _stop_if_embedder_unavailable(event: Event) -> None:
    """A failure event of an open circuit (a pipeline that reports it rather than raising it)."""
    if getattr(event, "error_type", None) == CircuitOpenError.__name__:
        raise EmbedderUnavailable(getattr(event, "message", ""))


def _outcome(job: Job, result: bool | BaseException) -> tuple[JobStatus, str | None]:
    """``result``: True (finished), False (stopped) or the error that ended the run."""
    if job.status is S.CANCELLING:
        return S.CANCELLED, job.reason
    if result is True:
        return S.SUCCEEDED, None
    if isinstance(result, BaseException):
        return S.FAILED, f"{type(result).__name__}: {result}"
    if job.status is S.PAUSING:
        return S.PAUSED, job.reason
    return S.QUEUED, "requeued: the server stopped during the run"


__all__ = [
    "RECOVERY",
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobService",
    "JobStatus",
    "JobStore",
    "Runner",
    "SQLiteJobStore",
    "StaleJobStatus",
    "build_job_service",
    "check_transition",
    "docs_runner",
    "job_store_url",
    "replay_runner",
    "validate_spec",
]
