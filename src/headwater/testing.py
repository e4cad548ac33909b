"""Public test helpers: run a pipeline and collect its events, embedders that fail on cue, and a
clock that moves only when told.

Users test their own configurations with these, and so do we: the test doubles live here, not
as copies in test files, so every test exercises the same ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from headwater.adapters.hashembed import HashEmbedder
from headwater.errors import PermanentError, RetryableError
from headwater.models import DeadLetter, Job, JobStatus, Vectors

if TYPE_CHECKING:
    from headwater.jobs.service import JobService


async def collect_events(events: AsyncIterator[Any]) -> list[Any]:
    """Every event of a ``stream_events()`` run, in order."""
    return [event async for event in events]


async def wait_for_status(
    service: JobService, job_id: str, *statuses: JobStatus, timeout_seconds: float = 60
) -> Job:
    """Poll a job until it reaches one of ``statuses``; AssertionError with its last state if not."""
    job = await service.get(job_id)
    for _ in range(int(timeout_seconds / 0.02)):
        job = await service.get(job_id)
        if job.status in statuses:
            return job
        await asyncio.sleep(0.02)
    msg = f"job {job_id} stayed {job.status}"
    raise AssertionError(msg)


class FakeClock:
    """Time that moves only when told, for anything that takes ``clock=`` and ``sleep=`` (the rate
    limiter, the circuit breaker, the HTTP embedder's back-off): pass the clock itself as
    ``clock`` and ``clock.sleep`` as ``sleep``, and minutes of back-off and cool-down run in no time.

    ``now`` starts at ``start`` and is the test's to move (``clock.now += 30``); ``sleep`` moves it
    by the seconds asked for, at once, and records them in ``slept``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class MemoryDeadLetters:
    """The dead-letter queue in a list (``ports.DeadLetters``): for running a pipeline in a test
    or a notebook without a metadata store. Ids start at 1, in the order letters were added."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.replayed: set[int] = set()

    async def add(self, letter: DeadLetter) -> int:
        self.letters.append(letter)
        return len(self.letters)

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        ids = range(1, len(self.letters) + 1)
        return [
            lt for i, lt in zip(ids, self.letters, strict=True) if include_replayed or i not in self.replayed
        ][:limit]

    async def get(self, letter_id: int) -> DeadLetter | None:
        return self.letters[letter_id - 1] if 1 <= letter_id <= len(self.letters) else None

    async def mark_replayed(self, letter_ids: Sequence[int]) -> None:
        self.replayed.update(letter_ids)


class FailingEmbedder(HashEmbedder):
    """The hash embedder, failing its first ``fail_times`` calls with ``error`` (retryable by
    default), or every call whose texts contain ``poison``."""

    def __init__(
        self, fail_times: int = 0, *, error: type[Exception] = RetryableError, poison: str | None = None
    ) -> None:
        super().__init__("hash://")
        self.fail_times = fail_times
        self.error = error
        self.poison = poison
        self.failures = 0

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if self.failures < self.fail_times or (self.poison and any(self.poison in t for t in texts)):
            self.failures += 1
            msg = f"embedder failure {self.failures} (injected)"
            raise self.error(msg)
        return await super().embed(texts)


__all__ = [
    "FailingEmbedder",
    "FakeClock",
    "MemoryDeadLetters",
    "PermanentError",
    "RetryableError",
    "collect_events",
    "wait_for_status",
]
