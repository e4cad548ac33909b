"""Jobs, their status and their event journal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from headwater.models import (
    Job,
    JobEvent,
    JobStatus,
)


@runtime_checkable
class JobStore(Protocol):
    """Jobs, their status and their event journal, durable across server crashes.

    Contract (tests/contract/test_job_store.py):
    - ``transition`` checks the move against ``headwater.jobs.TRANSITIONS`` and writes it in one
      transaction with a ``JobStatusChanged`` journal event; it raises ``IllegalTransition`` for a
      move the table forbids and ``StaleJobStatus`` (a subclass) when ``expected`` is given and
      the stored status differs: a compare-and-set, so two writers never both win.
    - ``append_events`` numbers events after the job's last ``seq`` (status changes included) and
      saves ``progress`` in the same transaction; ``events_after`` returns them in ``seq`` order.
    - ``list`` returns jobs in queue order: higher ``priority`` first, then oldest first.
    - Unknown job ids raise ``JobNotFound``, except in ``get`` (None).
    """

    async def open(self) -> None: ...

    async def create(self, kind: str, spec: dict[str, Any], priority: int = 0) -> str: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def transition(
        self, job_id: str, to: JobStatus, reason: str | None = None, *, expected: JobStatus | None = None
    ) -> Job: ...

    async def append_events(
        self, job_id: str, events: Sequence[dict[str, Any]], progress: dict[str, int] | None = None
    ) -> int:
        """Journal ``events`` (JSON objects) and return the last ``seq`` written."""
        ...

    async def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]: ...

    async def list(self, statuses: Sequence[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        """Jobs with one of ``statuses`` (all when None), in queue order."""
        ...

    async def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status present, 0 when none)."""
        ...

    async def delete(self, job_id: str) -> None:
        """Remove a final job and its journal; a job that can still move is refused
        (``IllegalTransition``), an unknown one raises ``JobNotFound``."""

    async def close(self) -> None: ...
