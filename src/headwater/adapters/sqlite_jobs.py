"""The job store on SQLite: jobs, their status and their event journal (ports.JobStore)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from headwater.adapters.sqlite.connection import connect, path_from_url, store_thread
from headwater.jobs.states import TERMINAL, IllegalTransition, JobNotFound, StaleJobStatus, check_transition
from headwater.models import Job, JobEvent, JobStatus

S = JobStatus


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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


class SQLiteJobStore:
    """JobStore on one SQLite file in WAL mode with ``synchronous=FULL`` (a status survives a power cut)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url, "job store", "sqlite:///path/to/jobs.db")
        self._thread = store_thread("sqlite-jobs", self.path)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        def _open() -> None:
            db = connect(self.path, "FULL")
            db.executescript(SCHEMA)
            self._db = db

        if self._db is None:
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
