"""Typed pipeline events: past-tense facts that ``stream_events()`` yields.

Every event serializes to one JSON object with a ``type`` discriminator and a schema ``version``;
``decode_event`` reads them back. The CLI's ``--json`` output is exactly this encoding, one event
a line, so scripts and the HTTP event stream see the same schema.
"""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 1


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    version: int = SCHEMA_VERSION
    run_id: str = ""


class RunStarted(Event, frozen=True, kw_only=True):
    kind: str
    source: str


class DocumentCompleted(Event, frozen=True, kw_only=True):
    doc_id: str
    uri: str
    outcome: str  # "added" | "updated"
    chunks: int
    chunks_embedded: int
    chunks_deleted: int
    pii_redactions: int = 0


class DocumentSkipped(Event, frozen=True, kw_only=True):
    doc_id: str
    uri: str
    reason: str  # "unchanged" | "previously_failed" | "unsupported" | ...


class DocumentFailed(Event, frozen=True, kw_only=True):
    doc_id: str
    uri: str
    stage: str
    error_type: str
    message: str
    attempts: int
    dlq_id: int | None


class DocumentDeleted(Event, frozen=True, kw_only=True):
    doc_id: str
    uri: str
    chunks_deleted: int


class BatchProgress(Event, frozen=True, kw_only=True):
    completed: int
    failed: int
    skipped: int
    in_flight: int
    estimated_total: int | None
    eta_seconds: float | None
    elapsed_seconds: float
    embed_rate_per_second: float | None = None  # the embedder's rate limit now, if it has one
    queue_depths: dict[str, int] | None = None  # items waiting in each bounded queue (backpressure)
    listed: int = 0  # files listed so far: a running total while the listing runs ahead
    chunks_embedded: int = 0


class RunCompleted(Event, frozen=True, kw_only=True):
    documents_seen: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    documents_skipped: int = 0
    documents_failed: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    chunks_reused: int = 0
    embed_calls: int = 0
    elapsed_seconds: float = 0.0


class WaitingForHome(Event, frozen=True, kw_only=True):
    """Another writer holds the home: this run starts when it is done (``--no-wait`` exits)."""

    home: str
    holder: str


class DocumentStarted(Event, frozen=True, kw_only=True):
    """A document is being read and prepared; its outcome event (completed, skipped as unchanged
    content, failed) follows. Opt-in (``document_started_events``): one more event per changed
    document. A file skipped on its size and mtime alone is never started."""

    doc_id: str
    uri: str


class AdapterStateChange(Event, frozen=True, kw_only=True):
    """An adapter's link to its server changed: a bus connection ``lost`` / ``regained``, an
    embedder's circuit breaker ``open`` / ``half_open`` / ``closed``."""

    adapter: str  # "embedder" | "bus"
    name: str  # the server, without credentials
    state: str
    detail: str = ""


DocumentEvent = (
    RunStarted
    | WaitingForHome
    | DocumentStarted
    | AdapterStateChange
    | DocumentCompleted
    | DocumentSkipped
    | DocumentFailed
    | DocumentDeleted
    | BatchProgress
    | RunCompleted
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[DocumentEvent] = msgspec.json.Decoder(DocumentEvent)


def to_json(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> DocumentEvent:
    return _decoder.decode(data)


def to_dict(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(event)
    return result


# --- signals (issue #3) ------------------------------------------------------------------------
# The signal run's final event serializes with "type": "RunCompleted" like the documents' one, so
# the two live in separate unions: decode signal output with ``decode_signal_event``.


class SignalRejected(Event, frozen=True, kw_only=True, tag="SignalRejected"):
    """One input record failed validation and was dead-lettered."""

    input_ref: str
    field: str
    reason: str


class WindowsClosed(Event, frozen=True, kw_only=True, tag="WindowsClosed"):
    """A micro-batch committed: its closed windows are in both stores and the checkpoint moved."""

    batch: int
    rows: int
    points: int
    late: int
    watermark_ms: int | None
    feature_latency_seconds: dict[str, float] | None = None
    """Stream mode: per window size, wall-clock time from the end of the newest window closed in
    this batch to its commit (how fresh the online features are). None in backfills."""


class SignalProgress(Event, frozen=True, kw_only=True, tag="SignalProgress"):
    events_seen: int
    events_total: int | None
    files_done: int
    files_total: int
    eta_seconds: float | None
    elapsed_seconds: float
    expectations_failed: int = 0


class ExpectationCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many events of a micro-batch failed one expectation of one field (``freshness``: 1 when
    the batch was stale, field ``event_time``)."""

    field: str
    expectation: str  # "min" | "max" | "not_null" | "allowed" | "freshness"
    on_fail: str  # "warn" (kept, counted) | "dlq" (dead-lettered)
    count: int


class ExpectationsFailed(Event, frozen=True, kw_only=True, tag="ExpectationsFailed"):
    """Events of a micro-batch failed the feature set's declared expectations: ``failures`` per
    field and expectation, ``dead_lettered`` the events removed (``on_fail = "dlq"``), each also
    reported as a ``SignalRejected`` (backfill) or a dead-lettered message (stream)."""

    feature_set: str
    batch: int
    failures: list[ExpectationCount]
    dead_lettered: int = 0
    newest_event_age_ms: int | None = None  # when freshness failed: now minus the newest event time


class SignalRunCompleted(Event, frozen=True, kw_only=True, tag="RunCompleted"):
    feature_set: str = ""
    feature_set_version: int = 0
    events_seen: int = 0
    events_invalid: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    late_corrected: int = 0
    feature_rows_written: int = 0
    points_written: int = 0
    points_late: int = 0
    expectations_failed: int = 0  # (event, expectation) failures, warn and dlq, and stale batches
    expectations_dead_lettered: int = 0  # events removed by an on_fail = "dlq" expectation
    batches: int = 0
    resumed_from_batch: int = 0
    elapsed_seconds: float = 0.0


SignalEvent = (
    RunStarted
    | WaitingForHome
    | SignalRejected
    | ExpectationsFailed
    | WindowsClosed
    | SignalProgress
    | SignalRunCompleted
)


# --- stream workers (issue #4) ----------------------------------------------------------------------


class ChangesPublished(Event, frozen=True, kw_only=True, tag="ChangesPublished"):
    """One poll of ``headwater watch``: what changed since the metadata store last saw the source."""

    source: str
    added: int
    updated: int
    deleted: int
    unchanged: int


class MessagesPublished(Event, frozen=True, kw_only=True, tag="MessagesPublished"):
    topic: str
    messages: int
    elapsed_seconds: float
    events: int = 0  # signals carried: more than ``messages`` when events are batched per message


class MessageDeadLettered(Event, frozen=True, kw_only=True, tag="MessageDeadLettered"):
    topic: str
    position: str
    deliveries: int
    error_type: str
    message: str
    dlq_id: int


class WorkerBatch(Event, frozen=True, kw_only=True, tag="WorkerBatch"):
    """A batch of messages whose effects are committed and that were acked."""

    topic: str
    messages: int
    acked: int
    dead_lettered: int
    already_done: int
    lag: int | None = None
    events_rejected: int = 0  # bad events inside batch messages, dead-lettered one by one


class WorkerStopped(Event, frozen=True, kw_only=True, tag="WorkerStopped"):
    topic: str
    reason: str  # "idle" | "signal" | "error"
    batches: int
    messages_acked: int
    messages_dead_lettered: int
    elapsed_seconds: float
