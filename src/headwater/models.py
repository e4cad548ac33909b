"""The data model (DESIGN §3) and the canonical hashing every key is built from.

Records are msgspec Structs: they encode at millions per second on the hot path and are
immutable, so a record that went into a store is the record that was hashed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import msgspec

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


class Document(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    uri: str
    source: str
    content_hash: str | None
    size: int
    mtime_ns: int
    status: str
    version: int = 0
    error_count: int = 0


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


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    entity_id: str
    event_time: int
    sequence: int
    payload: dict[str, float]
    source: str | None = None
    trace_id: str | None = None
    content_hash: str = ""


def signal_content_hash(entity_id: str, event_time_ms: int, sequence: int, payload: dict[str, float]) -> str:
    """Identity of a measurement; delivery metadata (source, trace_id) stays out of it."""
    return sha256_hex(canonical_json([entity_id, event_time_ms, sequence, payload]))


class FeatureRow(msgspec.Struct, frozen=True, kw_only=True):
    entity_id: str
    feature_set: str
    version: int
    window_ms: int
    window_start_ms: int
    values: dict[str, float | None]
    revision: int = 0
