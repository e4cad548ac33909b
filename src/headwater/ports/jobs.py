"""Jobs, their status and their event journal (``headwater.jobs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from headwater.models import Job, JobEvent, JobStatus
from headwater.ports.lifecycle import Lifecycle


@runtime_checkable
class JobQueue(Protocol):
    """The jobs themselves, durable across server crashes.

    - ``create`` stores a QUEUED job with its spec and its first journal event
      (``JobStatusChanged``) in one transaction, and returns a new id: it is not idempotent,
      each call is a new job.
    - ``list`` returns jobs in queue order: higher ``priority`` first, then oldest first.
    - ``delete`` removes a final job and its journal; a job that can still move is refused
      (``IllegalTransition``). Unknown ids raise ``JobNotFound``, except in ``get`` (None).
    """

    async def create(self, kind: str, spec: dict[str, Any], priority: int = 0) -> str: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list(self, statuses: Sequence[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        """Jobs with one of ``statuses`` (all when None), in queue order."""
        ...

    async def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status present, 0 when none)."""
        ...

    async def delete(self, job_id: str) -> None: ...


@runtime_checkable
class JobJournal(Protocol):
    """A job's status moves and its event journal, numbered by ``seq``.

    - ``transition`` checks the move against ``headwater.jobs.states.TRANSITIONS`` and writes it
      in one transaction with a ``JobStatusChanged`` journal event; it raises
      ``IllegalTransition`` for a move the table forbids and ``StaleJobStatus`` (a subclass)
      when ``expected`` is given and the stored status differs: a compare-and-set, so two
      writers never both win (and a retried call whose first attempt landed is refused, not
      applied twice).
    - ``append_events`` numbers events after the job's last ``seq`` (status changes included)
      and saves ``progress`` in the same transaction; durable when it returns.
    - ``events_after`` returns them in ``seq`` order. Unknown ids raise ``JobNotFound``.
    """

    async def transition(
        self, job_id: str, to: JobStatus, reason: str | None = None, *, expected: JobStatus | None = None
    ) -> Job: ...

    async def append_events(
        self, job_id: str, events: Sequence[dict[str, Any]], progress: dict[str, int] | None = None
    ) -> int:
        """Journal ``events`` (JSON objects) and return the last ``seq`` written."""
        ...

    async def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]: ...


@runtime_checkable
class JobLeases(Protocol):
    """Which runner runs which job, so that several runners can share one store.

    A runner (one job service, named by ``owner``) claims a job with a lease and renews it while
    the job runs; a job whose lease expired (its runner died) is recovered by any runner.

    - ``claim`` moves the first QUEUED job, in queue order, to RUNNING (``runs`` + 1, a
      ``JobStatusChanged`` event) leased to ``owner`` for ``lease_seconds``, in one transaction;
      None when nothing is queued. Two runners claiming at once never get the same job.
    - ``renew`` extends ``owner``'s lease to ``lease_seconds`` from now and says whether it still
      holds it: False once the job left RUNNING/PAUSING/CANCELLING or was recovered after the
      lease expired. A runner that lost its lease stops that run and does not settle it.
    - ``recover`` moves every RUNNING/PAUSING/CANCELLING job whose lease expired (or that has
      none: moved to RUNNING by ``transition``) as ``headwater.jobs.states.RECOVERY`` says, with
      ``reason``, each in one transaction, and returns them as they were before (their old status).
      A store may see more than the clock: the SQLite store, on one machine, also recovers at once
      a job whose lease holder's process is gone.

    Every other move out of RUNNING/PAUSING/CANCELLING ends the lease. Times are the store's
    clock (the database server's), so runners' clocks need not agree.
    """

    async def claim(self, owner: str, lease_seconds: float) -> Job | None: ...

    async def renew(self, job_id: str, owner: str, lease_seconds: float) -> bool: ...

    async def recover(self, reason: str) -> list[Job]: ...


@runtime_checkable
class JobStore(JobQueue, JobJournal, JobLeases, Lifecycle, Protocol):
    """All three, on one store (the job service's): contract in tests/contract/test_job_store.py."""
