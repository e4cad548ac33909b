"""Job statuses and the moves between them (DESIGN §6, seed 003).

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

from typing import Any

from headwater.errors import HeadwaterError, InputError
from headwater.models import JobStatus

S = JobStatus
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
REQUIRED_SPEC: dict[str, tuple[str, ...]] = {"docs": ("source",), "replay": (), "signals": ("source",)}


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
    feature_set = spec.get("feature_set")
    if kind == "signals" and feature_set is not None and not (isinstance(feature_set, str) and feature_set):
        msg = "a signals job's 'feature_set' must be a feature set's name, or absent for the default"
        raise InputError(msg, field="feature_set")
    ids = spec.get("ids")
    if (
        kind == "replay"
        and ids is not None
        and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids))
    ):
        msg = "a replay job's 'ids' must be a list of dead-letter ids (integers), or absent for all"
        raise InputError(msg, field="ids")
