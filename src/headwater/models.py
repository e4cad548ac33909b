"""The data model and the canonical hashing every key is built from: every record that crosses
a port (the ports package holds only the Protocols).

Records are msgspec Structs: they encode at millions per second on the hot path and are
immutable, so a record that went into a store is the record that was hashed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import msgspec

if TYPE_CHECKING:  # numpy costs ~0.17 s to import: a no-change re-run never needs it
    from collections.abc import Sequence

    import numpy as np
    import numpy.typing as npt

CHUNKER_VERSION = 1
"""Bumped when chunking changes in a way that must re-key every chunk."""


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, so equal values hash equally."""
    return msgspec.json.encode(value, order="sorted")


def normalize_relpath(relpath: str) -> str:
    """POSIX separators, NFC, no leading './' — the identity of a file under its source root."""
    path = unicodedata.normalize("NFC", relpath.replace("\\", "/"))
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


def make_doc_id(relpath: str) -> str:
    """Stable for a source object: derived from its normalized path relative to the source root."""
    return sha256_hex(b"doc\x00" + normalize_relpath(relpath).encode("utf-8"))[:32]


def make_chunk_id(doc_id: str, chunk_hash: str, n: int, config_key: str) -> str:
    """``n`` counts earlier chunks of the same document with the same hash (repeated boilerplate)."""
    return sha256_hex(f"chunk\x00{doc_id}\x00{chunk_hash}\x00{n}\x00{config_key}")[:32]


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """``offset``/``length`` index the normalized text the chunk was cut from; ``source_start``/
    ``source_end`` are the span in the decoded file (for a PDF, in page ``page``'s extracted text
    to page ``page_end``'s): what a citation highlights. None for chunks written before spans."""

    doc_id: str
    chunk_id: str
    uri: str
    offset: int
    length: int
    chunk_hash: str
    text: str
    source_start: int | None = None
    source_end: int | None = None
    page: int | None = None
    page_end: int | None = None


def signal_content_hash(entity_id: str, event_time_ms: int, sequence: int, payload: dict[str, float]) -> str:
    """Identity of a measurement; delivery metadata (source, trace_id) stays out of it."""
    return sha256_hex(canonical_json([entity_id, event_time_ms, sequence, payload]))


Vectors: TypeAlias = "npt.NDArray[np.float32]"
"""Embeddings: one float32 row per text."""


class SourceEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One object a source lists. ``problem`` set means: skip it, with this reason, unread."""

    relpath: str
    size: int
    mtime_ns: int
    problem: str | None = None


class Version(NamedTuple):
    """A document's recorded listing: equal size and mtime mean unchanged, unread."""

    size: int
    mtime_ns: int
    status: str
    doc_id: str


class DocState(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    source: str
    uri: str
    content_hash: str | None
    size: int
    mtime_ns: int
    status: str  # pending | cleanup | done | failed | deleting
    attempts: int
    error_count: int
    version: int


def doc_state_row(state: DocState) -> tuple[Any, ...]:
    """A document's state as the metadata stores keep it: one column per field, in field order."""
    return msgspec.structs.astuple(state)


def doc_state_from_row(row: Sequence[Any]) -> DocState:
    return DocState(**dict(zip(DocState.__struct_fields__, row, strict=True)))


class ChunkKey(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    chunk_id: str
    chunk_hash: str


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str  # "document" | "signal" | ...
    input_ref: str
    source: str
    stage: str
    error_type: str
    message: str
    traceback: str
    attempts: int
    created_at: str
    replayed_at: str | None = None
    payload: bytes | None = None
    """The message itself, for dead-lettered bus messages (what ``dlq replay`` republishes)."""


class SignalCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """How far a run consumed its input, and the engine state at that point.

    ``scope`` names the run (feature set, version, input root); ``fingerprint`` the exact input
    and declaration, so a changed input or feature set starts over instead of resuming.
    """

    scope: str
    fingerprint: str
    next_batch: int
    file_index: int
    row_offset: int
    counters: dict[str, int]
    state: bytes
    status: str  # "running" | "completed"


class BatchCommit(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the online store applies in one transaction for a signal batch (tuples in its
    column order: ``stages.features.ONLINE_ROW_COLUMNS``, ``POINT_COLUMNS``, ``INVALID_COLUMNS``).

    Late events are not here: they go to the offline store's ``late`` dataset (written before
    the commit under the batch's deterministic part name, like the window rows).
    """

    scope: str
    batch_no: int
    online_rows: list[tuple[Any, ...]]
    online_points: list[tuple[Any, ...]]
    invalid_rows: list[tuple[Any, ...]]
    checkpoint: SignalCheckpoint | None
    """None: rows only, the last checkpoint stays (replay is idempotent)."""


class Dataset(StrEnum):
    """The offline store's tables of a feature set (``OfflineFeatureStore`` partitions by them)."""

    windows = "windows"
    points = "points"
    late = "late"


def signal_checkpoint(
    scope: str,
    fingerprint: str,
    *,
    next_batch: int,
    state: bytes = b"",
    counters: dict[str, int] | None = None,
    position: tuple[int, int] = (0, 0),
    status: str = "running",
) -> SignalCheckpoint:
    """The one way a checkpoint is made: a fresh start, a backfill or stream batch, a stream
    intent and a stored row all agree on what an unset field means (a bus has no file position,
    an intent no counters)."""
    return SignalCheckpoint(
        scope=scope,
        fingerprint=fingerprint,
        next_batch=next_batch,
        file_index=position[0],
        row_offset=position[1],
        counters=counters if counters is not None else {},
        state=state,
        status=status,
    )


class BusMessage(msgspec.Struct, kw_only=True):
    """One delivery of a message. ``body`` is the raw CloudEvent (structured-mode JSON), left
    undecoded so a malformed message becomes a DLQ entry in the worker instead of an adapter error.

    ``position`` orders the topic's messages (NATS stream sequence; Redis entry id as (ms, seq));
    ``deliveries`` is 1 on the first delivery and counts redeliveries, across consumers and
    restarts. ``handle`` is the adapter's own receipt for ack/nak; callers never look inside it.
    """

    topic: str
    body: bytes
    position: tuple[int, int]
    deliveries: int
    handle: Any = None


class JobStatus(StrEnum):
    """Where a job is; the allowed moves are ``headwater.jobs.states.TRANSITIONS``."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One ingestion job. ``reason`` explains the last status change (a pause, a failure);
    ``progress`` holds the counts of its current run; ``runs`` counts its starts."""

    id: str
    kind: str  # "docs"
    spec: dict[str, Any]
    priority: int
    status: JobStatus
    reason: str | None
    progress: dict[str, int]
    runs: int
    created_at: str
    updated_at: str


def job_from_row(row: Sequence[Any]) -> Job:
    """A job as the job stores keep it: its fields in order, ``spec`` and ``progress`` as JSON text."""
    import json

    job_id, kind, spec, priority, status, reason, progress, runs, created_at, updated_at = row
    return Job(
        id=job_id, kind=kind, spec=json.loads(spec), priority=priority, status=JobStatus(status),
        reason=reason, progress=json.loads(progress), runs=runs, created_at=created_at, updated_at=updated_at,
    )  # fmt: skip


def job_status_event(previous: JobStatus | None, status: JobStatus, reason: str | None) -> dict[str, Any]:
    """The journal entry of a status change, the same in every job store."""
    return {"type": "JobStatusChanged", "previous": previous, "status": status, "reason": reason}


class JobEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One journal entry: ``seq`` is 1, 2, 3 … per job (the SSE event id, ``Last-Event-ID``)."""

    job_id: str
    seq: int
    at: str
    data: dict[str, Any]
