"""Signals: the online store (rows, checkpoints, invalid-record outbox) and the offline history."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from headwater.models import (
    BatchCommit,
    SignalCheckpoint,
)
from headwater.ports.lifecycle import Lifecycle


@runtime_checkable
class FeatureRows(Protocol):
    """Online feature rows: a signal batch applied, and the serving view read back.

    ``commit`` is one transaction: feature rows upserted by (entity_id, feature_set, version,
    window_ms, window_start_ms), point features upserted per entity, invalid records replaced
    by (scope, batch, index) (the ``InvalidRecordOutbox``), and the checkpoint saved when the
    batch carries one. It is called only after the batch's offline files are durable, so a crash
    anywhere replays the batch idempotently; it is durable when it returns.
    """

    async def commit(self, batch: BatchCommit) -> None: ...

    async def get_latest(
        self, entity_id: str, feature_set: str, version: int | None = None
    ) -> list[dict[str, Any]]:
        """For each window size, the row with the latest window start (highest version if none
        given), then the entity's point features (``kind`` = ``point``)."""
        ...


@runtime_checkable
class SignalCheckpoints(Protocol):
    """Where a signal run resumes: the checkpoint ``FeatureRows.commit`` saved last for ``scope``
    (None when none was), never ahead of the rows it covers."""

    async def load_checkpoint(self, scope: str) -> SignalCheckpoint | None: ...


@runtime_checkable
class InvalidRecordOutbox(Protocol):
    """Invalid records committed with their batch, waiting to be handed to the DLQ.

    Ordering: ``FeatureRows.commit`` stores them, the caller adds each to the dead letters and
    then ``mark_delivered``; a crash in between hands them again (at-least-once). A replayed
    commit of the same record keeps its delivery mark. Both calls are idempotent and durable."""

    async def undelivered_invalid(self) -> list[dict[str, Any]]:
        """Invalid records committed but not yet delivered, by (scope, batch, idx)."""
        ...

    async def mark_delivered(self, keys: list[tuple[str, int, int, int]]) -> None:
        """(scope, batch, idx, dlq_id) for records the DLQ accepted."""
        ...


@runtime_checkable
class FeatureStore(FeatureRows, SignalCheckpoints, InvalidRecordOutbox, Lifecycle, Protocol):
    """The online store: feature rows, checkpoints and the invalid-record outbox, committed
    together in one transaction per batch (one adapter holds all three)."""


@runtime_checkable
class OfflineFeatureStore(Protocol):
    """Append-only history of feature rows, partitioned by dataset, feature set and date.

    ``write`` replaces the part with the same name atomically and durably (deterministic names
    make a replay or a re-run a replacement, never a duplicate); ``prune`` drops a scope's parts
    beyond the last batch of a completed run (left from an earlier, longer run): idempotent.
    """

    async def write(self, dataset: str, feature_set: str, part: str, rows: Any) -> None: ...

    async def read(self, dataset: str, feature_set: str) -> Any:
        """Every stored row of the feature set as a Polars DataFrame (empty when none)."""
        ...

    async def prune(self, dataset: str, feature_set: str, scope: str, last_batch: int) -> int: ...
