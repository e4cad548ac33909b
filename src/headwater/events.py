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


DocumentEvent = (
    RunStarted | DocumentCompleted | DocumentSkipped | DocumentFailed | DocumentDeleted | BatchProgress | RunCompleted
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
