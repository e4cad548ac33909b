"""The job store on SQLite: jobs, their status, their event journal and their leases (ports.JobStore).

A lease is kept as the port says, on this machine's clock; since every process that opens the
file runs on this machine (WAL mode needs shared memory), a lease whose holder's process is gone
is recovered at once, without waiting for it to expire: a server restarted after kill -9 picks
its job up as it starts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headwater.adapters.sqlite.connection import connect, path_from_url, store_thread
from headwater.jobs.states import (
    RECOVERY,
    TERMINAL,
    IllegalTransition,
    JobNotFound,
    StaleJobStatus,
    check_transition,
)
from headwater.models import Job, JobEvent, JobStatus, job_from_row, job_status_event

S = JobStatus


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    spec TEXT NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT,
    progress TEXT NOT NULL DEFAULT '{}', runs INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    lease_owner TEXT, lease_until REAL, lease_pid TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
_JOB_COLUMNS = "id, kind, spec, priority, status, reason, progress, runs, created_at, updated_at"
# Added after the first release: a jobs.db made before them gets them when opened.
_LEASE_COLUMNS = {"lease_owner": "TEXT", "lease_until": "REAL", "lease_pid": "TEXT"}
_LEASED = tuple(s.value for s in RECOVERY)  # the statuses a runner holds a lease in


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
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _LEASE_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
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
                self._append(job_id, [job_status_event(None, S.QUEUED, None)], now)

        await self._thread.call(_create)
        return job_id

    async def get(self, job_id: str) -> Job | None:
        return await self._thread.call(self._get, job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

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
                self._move(job_id, current, to, reason, now)
            job = self._get(job_id)
            assert job is not None
            return job

        return await self._thread.call(_transition)

    def _move(self, job_id: str, current: JobStatus, to: JobStatus, reason: str | None, now: str) -> None:
        """The status write and its event; a move out of the leased statuses ends the lease."""
        keep = to.value in _LEASED
        self.db.execute(
            "UPDATE jobs SET status = ?, reason = ?, updated_at = ?, runs = runs + ?, "
            "lease_owner = CASE WHEN ? THEN lease_owner END, lease_until = CASE WHEN ? THEN lease_until END, "
            "lease_pid = CASE WHEN ? THEN lease_pid END WHERE id = ? AND status = ?",
            (to.value, reason, now, int(to is S.RUNNING), keep, keep, keep, job_id, current.value),
        )
        self._append(job_id, [job_status_event(current, to, reason)], now)

    async def claim(self, owner: str, lease_seconds: float) -> Job | None:
        def _claim() -> Job | None:
            now = _now()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute(
                    "SELECT id FROM jobs WHERE status = ? ORDER BY priority DESC, seq LIMIT 1",
                    (S.QUEUED.value,),
                ).fetchone()
                if row is None:
                    return None
                self._move(row[0], S.QUEUED, S.RUNNING, None, now)
                self.db.execute(
                    "UPDATE jobs SET lease_owner = ?, lease_until = ?, lease_pid = ? WHERE id = ?",
                    (owner, time.time() + lease_seconds, _this_process(), row[0]),
                )
            return self._get(row[0])

        return await self._thread.call(_claim)

    async def renew(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        def _renew() -> bool:
            with self.db:
                cursor = self.db.execute(
                    f"UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                    f"AND status IN ({','.join('?' * len(_LEASED))})",
                    (time.time() + lease_seconds, job_id, owner, *_LEASED),
                )
                return cursor.rowcount == 1

        return await self._thread.call(_renew)

    async def recover(self, reason: str) -> list[Job]:
        def _recover() -> list[Job]:
            sql = (
                f"SELECT {_JOB_COLUMNS}, lease_until, lease_pid FROM jobs "
                f"WHERE status IN ({','.join('?' * len(_LEASED))})"
            )
            recovered = []
            for row in self.db.execute(sql, _LEASED).fetchall():  # a read first: mostly nothing to do
                if not _expired(row[-2], row[-1]):
                    continue
                job = job_from_row(row[:-2])
                now = _now()
                with self.db:
                    self.db.execute("BEGIN IMMEDIATE")
                    current = self.db.execute(
                        "SELECT status, lease_until, lease_pid FROM jobs WHERE id = ?", (job.id,)
                    ).fetchone()
                    if current is None or current[0] != job.status.value or not _expired(*current[1:]):
                        continue  # settled, or renewed, meanwhile
                    self._move(job.id, job.status, RECOVERY[job.status], reason, now)
                recovered.append(job)
            return recovered

        return await self._thread.call(_recover)

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
            return [job_from_row(row) for row in self.db.execute(sql, (*args, limit))]

        return await self._thread.call(_list)


def _this_process() -> str:
    """This process, told apart from a later one with the same pid in another pid namespace."""
    try:
        namespace = str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        namespace = ""
    return f"{namespace}/{os.getpid()}"


def _expired(lease_until: float | None, holder: str | None) -> bool:
    """No lease, a lease past its time, or one whose holder's process is gone."""
    if lease_until is None or lease_until < time.time():
        return True
    if holder is None or holder.rpartition("/")[0] != _this_process().rpartition("/")[0]:
        return False  # another pid namespace: only its clock can tell
    pid = int(holder.rpartition("/")[2])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
