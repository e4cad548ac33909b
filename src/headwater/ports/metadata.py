"""A home's metadata: document state, the scan log, dead letters, the embedding cache, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from headwater.models import (
    ChunkKey,
    DeadLetter,
    DocState,
    Vectors,
    Version,
)
from headwater.ports.lifecycle import Lifecycle


@runtime_checkable
class DocumentReader(Protocol):
    """What the metadata store knows about documents, read whole: status, verify and replay.

    Reads only: no side effects, safe to repeat, and they see every write that returned."""

    async def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        """The recorded state of each of ``doc_ids`` that is known (unknown ones are left out)."""
        ...

    def chunk_keys(self) -> AsyncIterator[ChunkKey]:
        """Every chunk the metadata says should be in the vector store."""
        ...

    async def counts(self) -> dict[str, int]:
        """documents, chunks, dlq (unreplayed) and documents per status."""
        ...

    async def documents_with_status(self, statuses: Sequence[str]) -> list[DocState]:
        """The documents in any of ``statuses`` (``verify`` looks for ones left mid-update)."""
        ...


@runtime_checkable
class DocumentLedger(Protocol):
    """A document's life through a run, and its committed chunk keys.

    Ordering: ``claim`` (pending, attempts + 1) → vectors upserted → ``commit`` (cleanup, with its
    chunk keys) → stale vectors deleted → ``finish`` (done). Only ``done`` lets a later run skip
    the document, so a crash anywhere is repaired by re-running. Each call is one transaction,
    durable when it returns (except where a method says otherwise) and idempotent but for the
    attempt ``claim`` counts (which is what brings a crashing document to the DLQ).
    """

    async def get_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkKey]]:
        """Committed chunk keys per document (what the vector store holds for it)."""
        ...

    async def claim(self, docs: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        """Mark (doc_id, source, uri) pending and count an attempt; returns attempts per doc.
        Need only survive the process dying, not a power cut."""
        ...

    async def release(self, doc_ids: Sequence[str]) -> None:
        """Take back the attempt ``claim`` counted for documents a run stopped before finishing
        (a stop request, an embedder outage, a full disk): the process survived, so they did
        not crash it, and must not come closer to the DLQ. Documents no longer pending are
        left alone."""
        ...

    async def commit(self, docs: Sequence[DocState], chunks: dict[str, Sequence[ChunkKey]]) -> None:
        """Replace the documents' rows and, for each document in ``chunks``, its chunk keys."""
        ...

    async def finish(self, doc_ids: Sequence[str], status: str = "done") -> None: ...

    async def forget(self, doc_ids: Sequence[str]) -> None:
        """Remove documents and their chunk keys (after their vectors were deleted)."""
        ...


@runtime_checkable
class ScanLog(Protocol):
    """A source listing compared with what is recorded: the whole cost of a no-change re-run.

    ``note_seen`` then ``unseen``: the uris one scan listed, then the documents it did not list
    (deleted from the source). The seen set belongs to one open store (one run) and need not be
    durable; ``touch`` need not be either: a lost one only costs a re-read. All are idempotent.
    """

    async def versions(self, source: str, uris: Sequence[str]) -> dict[str, Version]:
        """What is recorded per uri of ``source``: all a no-change re-run asks of each file."""
        ...

    async def touch(self, docs: Sequence[DocState]) -> None:
        """Record a new size and mtime for documents whose bytes did not change (a checkout, a
        restore). Need not be durable: if it is lost, the next run reads and hashes them again."""
        ...

    async def note_seen(self, uris: Sequence[str]) -> None:
        """Remember the uris (relative paths) this run's scan listed (in the store, not in RAM)."""
        ...

    async def unseen(self, source: str, limit: int) -> list[DocState]:
        """Documents of ``source`` the scan did not list, in uri order: deleted from the source."""
        ...


@runtime_checkable
class DocumentState(DocumentReader, DocumentLedger, ScanLog, Protocol):
    """The documents' side of the metadata store: reads, the ledger of a run and the scan log."""


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where failed inputs go (documents, signals, bus messages), with full context.

    ``add`` is durable when it returns and returns the letter's id; it is not idempotent (each
    call is a new letter), so callers that may replay keep an outbox (see ``InvalidRecordOutbox``)
    or add only once the input is known to be dead."""

    async def add(self, letter: DeadLetter) -> int: ...


@runtime_checkable
class DeadLetters(DeadLetterSink, Protocol):
    """The dead-letter queue: every input that failed, until replayed. ``list`` is in id order
    (oldest first); ``mark_replayed`` is idempotent and durable when it returns."""

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]: ...

    async def get(self, letter_id: int) -> DeadLetter | None: ...

    async def mark_replayed(self, letter_ids: Sequence[int]) -> None: ...


@runtime_checkable
class EmbeddingCache(Protocol):
    """Vectors by (embedder id, chunk_hash): the same text is never embedded twice.

    ``put_vectors`` is an idempotent upsert that need not be durable (a lost entry costs only a
    re-embedding); ``get_vectors`` leaves out the hashes it does not hold."""

    async def get_vectors(self, embedder_id: str, chunk_hashes: Sequence[str]) -> dict[str, Vectors]: ...

    async def put_vectors(self, embedder_id: str, vectors: dict[str, Vectors]) -> None: ...


@runtime_checkable
class SettingsStore(Protocol):
    """Small durable key/values of a home (the chunker key a run compares with, the attempts of
    suspect bus messages). ``set_setting`` overwrites, is durable when it returns, idempotent."""

    async def get_setting(self, key: str) -> str | None: ...

    async def set_setting(self, key: str, value: str) -> None: ...


@runtime_checkable
class MetadataStore(DocumentState, DeadLetters, EmbeddingCache, SettingsStore, Lifecycle, Protocol):
    """A home's metadata as one store (the embedded SQLite one): the ports above, opened and
    closed together. Code that needs only part of it is annotated with that part's port."""
