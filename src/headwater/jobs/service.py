"""The job service: runs queued jobs by priority and settles each one's status (see ``states``).

Pausing and cancelling are cooperative: the request writes PAUSING/CANCELLING, the runner stops
the pipeline and only then writes PAUSED/CANCELLED. Nothing is lost by stopping mid-run: the
document pipeline is incremental and crash-safe, so the next run skips what is done.

Several services may share one store (PostgreSQL): each claims a job with a lease and renews it
while the job runs; a job whose lease expired (its service died) is recovered by another, which
runs it again: resuming it, since the pipeline skips what is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from headwater.errors import ConfigError, EmbedderUnavailable, HeadwaterError, StoreUnavailable
from headwater.events import DocumentFailed, Event, to_dict
from headwater.jobs.states import (
    RECOVERY,
    TERMINAL,
    IllegalTransition,
    JobNotFound,
    StaleJobStatus,
    validate_spec,
)
from headwater.models import Job, JobEvent, JobStatus
from headwater.observability import get_logger, span
from headwater.pipeline.ratelimit import CircuitOpenError
from headwater.ports import JobStore

S = JobStatus
log = get_logger("headwater.jobs")


Runner = Callable[[Job], AsyncIterator[Event]]
"""Runs one job: an event stream (``stream_events()``) that ends when the job's work is done."""


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
    renewed: float = 0.0  # time.monotonic() of the last renewal the store confirmed
    lost: bool = False  # the lease is gone: another service may run the job now; never settle it


class JobService:
    """Runs queued jobs by priority, at most ``max_concurrent`` at once, and settles each one's
    status when its run ends, stops or fails.

    A run is stopped by cancelling the task that consumes its event stream (the pipeline is
    crash-safe, so any point is a safe point). Requests from other processes (``headwater jobs
    pause`` on the same home) are seen by polling the store every ``poll_seconds``.

    Each job runs under a lease (``ports.JobLeases``) of ``lease_seconds``, renewed every
    ``renew_seconds``; the dispatcher recovers jobs whose lease expired (the service that ran
    them died) and runs them again. A run whose lease is lost (not renewed in time, or taken over)
    is stopped and left to the service that holds the job now.
    """

    def __init__(
        self,
        store: JobStore,
        runners: Mapping[str, Runner],
        *,
        max_concurrent: int = 1,
        poll_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        renew_seconds: float = 10.0,
        observers: Sequence[Callable[[Event], None]] = (),
    ) -> None:
        if max_concurrent < 1:
            msg = f"max_concurrent must be at least 1, not {max_concurrent}"
            raise ConfigError(msg)
        if not 0 < renew_seconds < lease_seconds:
            msg = (
                f"job_renew_seconds ({renew_seconds}) must be above 0 and below job_lease_seconds "
                f"({lease_seconds}): a lease must be renewed before it expires"
            )
            raise ConfigError(msg)
        self.store = store
        self.runners = dict(runners)
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # in the store's leases
        self.observers = tuple(observers)  # see every event of every run (metrics)
        self._active: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # set and replaced on every journal write (followers wait on it)
        self._dispatcher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store only: enough for commands (pause, cancel …) from a second process."""
        await self.store.open()

    async def start(self) -> None:
        """Open the store, settle the jobs a crashed server left behind, and start dispatching."""
        await self.open()
        await self._recover()
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._renewer = asyncio.create_task(self._renew_leases())

    async def stop(self) -> None:
        """Stop dispatching; running jobs go back to the queue (paused/cancelled if so asked)."""
        self._closing = True
        for task in (self._dispatcher, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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

    async def _recover(self) -> None:
        """Settle the jobs whose service died (their lease expired): see ``states.RECOVERY``."""
        for job in await self.store.recover("recovered: its runner stopped while the job ran"):
            log.warning("job recovered", job_id=job.id, was=job.status, now=RECOVERY[job.status])

    async def _fill(self) -> None:
        await self._recover()  # a dead service's jobs: queued again (or paused, cancelled) for anyone
        while len(self._active) < self.max_concurrent:
            job = await self.store.claim(self.owner, self.lease_seconds)
            if job is None:
                return
            self._notify()
            run = _Active(task=asyncio.create_task(self._run(job)), renewed=time.monotonic())
            self._active[job.id] = run
            run.task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._active.pop(job_id, None)
        self._wake.set()
        self._notify()

    async def _renew_leases(self) -> None:
        """Renew the lease of every job this service runs; stop the runs whose lease is lost."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            for job_id, run in list(self._active.items()):
                if run.lost:
                    continue
                try:
                    held = await self.store.renew(job_id, self.owner, self.lease_seconds)
                except HeadwaterError as exc:  # the store is away: the lease holds until it expires
                    log.warning("job lease not renewed", job_id=job_id, error=str(exc))
                    held = time.monotonic() - run.renewed < self.lease_seconds
                else:
                    run.renewed = time.monotonic() if held else run.renewed
                if not held and job_id in self._active:
                    run.lost = True
                    log.warning("job lease lost: another runner may run it now", job_id=job_id)
                    self._stop_run(job_id)

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
        if self._active[job.id].lost or not await self._still_held(job.id):
            log.warning("job left to the runner that holds it now", job_id=job.id)
            return
        await self._settle(job.id, result)

    async def _still_held(self, job_id: str) -> bool:
        """Renewed once more before settling: a run whose lease expired unnoticed (a stalled
        process) must not settle the job another service took over."""
        try:
            return await self.store.renew(job_id, self.owner, self.lease_seconds)
        except HeadwaterError:
            return True  # the settle's own write will tell

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
            except (EmbedderUnavailable, StoreUnavailable) as exc:
                what = "embedder" if isinstance(exc, EmbedderUnavailable) else "store"
                reason = f"{what} unavailable: {exc}"
                await journal.close()  # the events that led here come before the status change
                await self.store.transition(job.id, S.PAUSING, reason, expected=S.RUNNING)
                return False
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()  # stops the pipeline and closes its adapters
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
    if isinstance(event, DocumentFailed) and event.error_type == CircuitOpenError.__name__:
        raise EmbedderUnavailable(event.message)


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
