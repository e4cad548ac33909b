"""The job store on PostgreSQL (ports.JobStore): jobs, their journal and their leases, in the
``jobs`` and ``job_events`` tables of a schema (migration step 2), shared by every runner
(``headwater serve``, ``headwater jobs run``) that names it.

The semantics are the SQLite store's (tests/contract/test_job_store.py runs on both); what a
shared database adds is the lease: ``claim`` takes the next queued job with ``FOR UPDATE SKIP
LOCKED``, so runners claiming together never wait on each other nor get the same job, and a job
whose runner died (its lease past the database's clock) is recovered by whichever runner looks
next. A status move and its journal event commit together, durably, before the call returns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from headwater.adapters.postgres.base import PostgresBase, utc_now
from headwater.jobs.states import (
    RECOVERY,
    TERMINAL,
    IllegalTransition,
    JobNotFound,
    StaleJobStatus,
    check_transition,
)
from headwater.models import Job, JobEvent, JobStatus, job_from_row, job_status_event

if TYPE_CHECKING:
    from psycopg import AsyncConnection

S = JobStatus
_COLUMNS = "id, kind, spec, priority, status, reason, progress, runs, created_at, updated_at"
_LEASED = [s.value for s in RECOVERY]  # the statuses a runner holds a lease in
_QUEUE_ORDER = "ORDER BY priority DESC, seq"


class PostgresJobStore(PostgresBase):
    """Implements ports.JobStore in one schema of a PostgreSQL database
    (``postgresql://USER@HOST:PORT/DB?schema=S``): the metadata store's schema by default."""

    what = "job store"
    pool_size = 3  # the journal's writer, the dispatcher's reads and claims, the lease renewals

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- the queue -------------------------------------------------------------------------------
    async def create(self, kind: str, spec: dict[str, Any], priority: int = 0) -> str:
        job_id, now = uuid.uuid4().hex, utc_now()
        async with self.tx() as conn:
            await conn.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, NULL, '{{}}', 0, %s, %s)",
                [job_id, kind, json.dumps(spec), priority, S.QUEUED.value, now, now],
            )
            await _append(conn, job_id, [job_status_event(None, S.QUEUED, None)], now)
        return job_id

    async def get(self, job_id: str) -> Job | None:
        rows = await self.fetch(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", [job_id])
        return job_from_row(rows[0]) if rows else None

    async def counts(self) -> dict[JobStatus, int]:
        rows = await self.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        return {**dict.fromkeys(JobStatus, 0), **{JobStatus(status): int(n) for status, n in rows}}

    async def delete(self, job_id: str) -> None:
        async with self.tx() as conn:
            status = await _lock(conn, job_id)
            if status not in TERMINAL:
                msg = f"job {job_id}: only a finished job can be deleted; this one is {status}"
                raise IllegalTransition(job_id, status, status, msg)
            await conn.execute("DELETE FROM job_events WHERE job_id = %s", [job_id])
            await conn.execute("DELETE FROM jobs WHERE id = %s", [job_id])

    # -- the journal -----------------------------------------------------------------------------
    async def transition(
        self, job_id: str, to: JobStatus, reason: str | None = None, *, expected: JobStatus | None = None
    ) -> Job:
        async with self.tx() as conn:
            current = await _lock(conn, job_id)  # the read and the write see the same status
            if expected is not None and current != expected:
                raise StaleJobStatus(job_id, current, to, expected)
            check_transition(job_id, current, to)
            return await _move(conn, job_id, current, to, reason)

    async def append_events(
        self, job_id: str, events: Sequence[dict[str, Any]], progress: dict[str, int] | None = None
    ) -> int:
        async with self.tx() as conn:
            await _lock(conn, job_id)  # one writer numbers a job's events at a time
            if progress is not None:
                await conn.execute(
                    "UPDATE jobs SET progress = %s WHERE id = %s", [json.dumps(progress), job_id]
                )
            return await _append(conn, job_id, events, utc_now())

    async def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]:
        rows = await self.fetch(
            "SELECT seq, at, data FROM job_events WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            [job_id, after, limit],
        )
        return [JobEvent(job_id=job_id, seq=s, at=at, data=json.loads(d)) for s, at, d in rows]

    # -- the leases ------------------------------------------------------------------------------
    async def claim(self, owner: str, lease_seconds: float) -> Job | None:
        async with self.tx() as conn:
            row = await (
                await conn.execute(
                    f"SELECT id FROM jobs WHERE status = %s {_QUEUE_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED",
                    [S.QUEUED.value],
                )
            ).fetchone()
            if row is None:
                return None
            job = await _move(conn, row[0], S.QUEUED, S.RUNNING, None)
            await conn.execute(
                "UPDATE jobs SET lease_owner = %s, lease_until = now() + make_interval(secs => %s) "
                "WHERE id = %s",
                [owner, lease_seconds, job.id],
            )
            return job

    async def renew(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        async with self.tx(durable=False) as conn:  # a renewal lost with the server is redone
            cur = await conn.execute(
                "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
                "WHERE id = %s AND lease_owner = %s AND status = ANY(%s)",
                [lease_seconds, job_id, owner, _LEASED],
            )
            return cur.rowcount == 1

    async def recover(self, reason: str) -> list[Job]:
        recovered = []
        async with self.tx() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE status = ANY(%s) "
                    "AND (lease_until IS NULL OR lease_until < now()) FOR UPDATE SKIP LOCKED",
                    [_LEASED],
                )
            ).fetchall()
            for row in rows:
                job = job_from_row(row)
                await _move(conn, job.id, job.status, RECOVERY[job.status], reason)
                recovered.append(job)
        return recovered

    # last: below it, ``list`` in an annotation would name this method
    async def list(self, statuses: Sequence[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        if statuses is None:
            rows = await self.fetch(f"SELECT {_COLUMNS} FROM jobs {_QUEUE_ORDER} LIMIT %s", [limit])
        else:
            rows = await self.fetch(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = ANY(%s) {_QUEUE_ORDER} LIMIT %s",
                [[s.value for s in statuses], limit],
            )
        return [job_from_row(row) for row in rows]


async def _lock(conn: AsyncConnection[Any], job_id: str) -> JobStatus:
    row = await (await conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", [job_id])).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return JobStatus(row[0])


async def _move(
    conn: AsyncConnection[Any], job_id: str, current: JobStatus, to: JobStatus, reason: str | None
) -> Job:
    """The status write and its event; a move out of the leased statuses ends the lease."""
    now, keep = utc_now(), to.value in _LEASED
    row = await (
        await conn.execute(
            "UPDATE jobs SET status = %s, reason = %s, updated_at = %s, runs = runs + %s, "
            "lease_owner = CASE WHEN %s THEN lease_owner END, "
            "lease_until = CASE WHEN %s THEN lease_until END "
            f"WHERE id = %s AND status = %s RETURNING {_COLUMNS}",
            [to.value, reason, now, int(to is S.RUNNING), keep, keep, job_id, current.value],
        )
    ).fetchone()
    assert row is not None  # the caller holds the row's lock
    await _append(conn, job_id, [job_status_event(current, to, reason)], now)
    return job_from_row(row)


async def _append(conn: AsyncConnection[Any], job_id: str, events: Sequence[dict[str, Any]], now: str) -> int:
    row = await (await conn.execute("SELECT max(seq) FROM job_events WHERE job_id = %s", [job_id])).fetchone()
    last = int(row[0] or 0) if row else 0
    if events:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO job_events (job_id, seq, at, data) VALUES (%s, %s, %s, %s)",
                [(job_id, last + i, now, json.dumps(e)) for i, e in enumerate(events, start=1)],
            )
    return last + len(events)
