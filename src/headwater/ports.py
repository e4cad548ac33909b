"""The ports: what the pipelines need from the outside world, as Protocols.

Adapters live in ``headwater.adapters`` and are chosen by URL scheme (``registry.py``). A
constructor only records its URL (cheap, picklable); ``open()`` connects. Every method that writes
is idempotent unless its port says otherwise, because the engine replays work after a crash
rather than trusting bookkeeping.

Each port is small and says when its methods are called, what is idempotent and what is durable
when a call returns. One adapter often implements several (the SQLite metadata store holds
documents, dead letters, the embedding cache and settings): the composite Protocols
(``MetadataStore``, ``FeatureStore``, ``StreamBus``, ``VectorStore``) name those bundles, while
code that uses only part of a store is annotated with the small port it uses. Optional ports
(``Countable``, ``LoadsModel``, ``RateLimited``, ``Compactable``, ``Snapshots``, ``WatchesState``)
are tested with ``isinstance``, never probed with ``getattr``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from headwater.errors import InputError
from headwater.models import (
    BatchCommit,
    BusMessage,
    Chunk,
    ChunkKey,
    DeadLetter,
    DocState,
    Job,
    JobEvent,
    JobStatus,
    SignalCheckpoint,
    SourceEntry,
    Vectors,
    Version,
)


@runtime_checkable
class Lifecycle(Protocol):
    """Open and close, shared by the ports whose adapters hold a connection. ``open`` connects
    (constructors do no I/O) and is called once before any other method; ``close`` is called
    once after the last one returned, and releases what ``open`` took."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A tree of documents (a local folder, a bucket prefix).

    ``scan`` streams entries in a deterministic order, in pages (a folder walk's batch, an object
    store's listing page), and never yields anything outside the root; it raises if the listing
    itself fails, so a partial listing never looks like deletions.
    """

    uri: str

    def scan(self) -> AsyncIterator[list[SourceEntry]]:
        """Pages, not single entries: a no-change re-run of 100k files is this listing, and an
        async hand-off per entry was a tenth of it."""
        ...

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        """Entries for just these paths, as ``scan`` would list them; absent ones are left out
        (a stream worker processes changed paths without listing the whole tree)."""
        ...

    async def read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        """Whole object; raises InputError when unreadable or larger than ``max_bytes``."""
        ...

    async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        """``read`` of each entry, in order, an unreadable one as its InputError in its place.

        A cold run reads thousands of small files: one hand-off to a thread per batch instead
        of one per file, each waiting for the GIL, was most of the time its scan spent reading."""
        ...


@runtime_checkable
class Countable(Protocol):
    """Optional for sources: how many entries ``scan`` will list, known well before the listing
    ends (it is paced by the work it feeds): a run's progress total and ETA."""

    async def count(self) -> int: ...


StateListener: TypeAlias = "Callable[[str, str, str], None]"
"""(name, state, detail): an adapter's link to its server changed; ``name`` has no credentials."""


@runtime_checkable
class WatchesState(Protocol):
    """Optional, for adapters with a server behind them (embedders, buses): the one listener
    registered is told of each change of their link (events.AdapterStateChange), synchronously
    and from the adapter's event loop; it must not block. None unregisters it."""

    def watch_state(self, listener: StateListener | None) -> None: ...


@runtime_checkable
class Embedder(Lifecycle, Protocol):
    """Batch text → vectors. ``id`` names model and settings: it keys the embedding cache.
    ``embed`` has no side effects: it is retried freely, and batches may run concurrently."""

    id: str
    dimensions: int
    cacheable: bool
    """Worth caching: False when embedding costs less than a cache lookup (the hash embedder)."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Float32 array of shape (len(texts), dimensions); a text's vector never depends on its batch."""
        ...


@runtime_checkable
class LoadsModel(Protocol):
    """Optional for embedders that run a local model. ``warm`` loads it (seconds) so a run can
    overlap that with its first reads; ``single_threaded`` makes its encodes use one intra-op
    thread: a query is one short text, which one core encodes as fast as two, and on busy cores
    torch's threads wait for each other at every op (MiniLM: ~16 ms became ~400 ms)."""

    async def warm(self) -> None: ...

    async def single_threaded(self) -> None: ...


@runtime_checkable
class RateLimited(Protocol):
    """Optional for embedders behind a rate limit (seed 004). ``rate_limit`` is the requests per
    second allowed now (progress, metrics); ``observe_queue`` hears how full the queue after the
    embedder is (depth, capacity) and adapts the rate, returning it."""

    @property
    def rate_limit(self) -> float: ...

    def observe_queue(self, depth: int, capacity: int) -> float: ...


@runtime_checkable
class VectorWriter(Protocol):
    """Writes to the chunk vectors, keyed by ``chunk_id``.

    Idempotent: ``upsert`` per chunk id, ``update_positions`` per row and ``delete_stale`` per
    document, so the engine replays a group after a crash instead of trusting bookkeeping.
    Ordering: a group's vectors are upserted before its state is committed, and its stale rows
    are deleted after (a crash between the two is repaired by re-running the group). Durable
    when the call returns.
    """

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        """``fresh`` promises none of these ids exist yet (a pure append is cheaper than a merge)."""
        ...

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        """Rewrite uri/offset/length of existing rows (text moved within its document), not vectors."""
        ...

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        """For each doc_id, delete its rows whose chunk_id is not in the set (empty set: all)."""
        ...


@runtime_checkable
class VectorReader(Protocol):
    """Reads of the chunk vectors: no side effects, any order, safe to repeat. They see every
    write that returned before them (a query after a run sees the whole run)."""

    async def count(self) -> int: ...

    async def search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks with their distances, nearest first."""
        ...

    def scan(self) -> AsyncIterator[Chunk]:
        """Every stored chunk (no vectors), for fingerprints, verify and export."""
        ...


@runtime_checkable
class VectorStore(VectorWriter, VectorReader, Protocol):
    """Chunk vectors keyed by ``chunk_id``: the write and read sides of one index, opened once
    the embedder's ``dimensions`` are known (``open`` is idempotent; a second process may open
    the same index for reading) and closed after the last write returned."""

    async def open(self, dimensions: int) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Compactable(Protocol):
    """Optional for vector stores whose maintenance reads the whole index (``headwater
    optimize``): compaction, index folding, old versions dropped. Idempotent."""

    async def optimize(self) -> None: ...


@runtime_checkable
class Snapshots(Protocol):
    """Optional for vector stores a server can mirror in memory: the latest version number and,
    unless it is still ``since``, every row with its vector (an Arrow table)."""

    async def snapshot(self, since: int | None = None) -> tuple[int, Any]: ...


# --- the metadata store: document state, scan log, dead letters, cache, settings --------------


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


# --- signals (issue #3) ------------------------------------------------------------------------


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


# --- streaming (issue #4) -----------------------------------------------------------------------


@runtime_checkable
class BusPublisher(Lifecycle, Protocol):
    """Writes CloudEvents to a topic of the bus.

    ``publish`` returns once the bus has stored the messages durably, in the given order; it is
    not idempotent (a retried publish may store a message twice: consumers are at-least-once and
    sinks are idempotent). Topic names are dot-separated words (``docs``, ``signals.sensors``);
    adapters map them to subjects/streams/keys under a ``headwater`` prefix."""

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None: ...


@runtime_checkable
class BusConsumer(Lifecycle, Protocol):
    """Reads a topic in a consumer group: at-least-once, acked explicitly.

    ``consume`` gives each message to one consumer of a group; messages of a topic arrive in
    ``position`` order on first delivery. A message not acked within ``ack_wait_seconds``
    (worker killed, hung) is delivered again, to this or another consumer of the group, with
    ``deliveries`` + 1; the adapter never drops it by itself (no MaxDeliver discard: the worker
    decides when to dead-letter, because only it knows whether a sink committed). ``ack`` only
    after the sink committed; ack, nak and extend are idempotent.
    """

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_seconds`` for the first (empty: idle)."""
        ...

    async def ack(self, messages: Sequence[BusMessage]) -> None: ...

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        """Still working on these: restart their ack wait, so a batch that takes longer than the
        ack wait is not handed to a second consumer while the first still processes it."""
        ...

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        """Deliver these again after ``delay_seconds`` (with ``deliveries`` + 1)."""
        ...


@runtime_checkable
class BusDeadLetters(Protocol):
    """The bus's own dead letters, per topic (``<topic>.dlq``).

    ``dead_letter`` stores the message with the reason durably, then acks it (so a crash between
    the two leaves a redelivery, never a lost message); ``dead_letters`` reads them oldest first."""

    async def dead_letter(self, message: BusMessage, reason: str) -> None: ...

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """What ``dead_letter`` stored for ``topic``: (body, reason), oldest first."""
        ...


@runtime_checkable
class ConsumerLag(Protocol):
    """How far a consumer group is behind: a read, no side effects, an estimate while others
    publish and ack."""

    async def pending(self, topic: str, group: str) -> int:
        """Messages published but not yet acked by ``group`` (consumer lag)."""
        ...


@runtime_checkable
class StreamBus(BusPublisher, BusConsumer, BusDeadLetters, ConsumerLag, Protocol):
    """A durable log of CloudEvents with consumer groups (tests/contract/test_stream_bus.py):
    the four ports above on one connection, ``url`` naming it (without credentials)."""

    url: str


# --- jobs (issue #5) ----------------------------------------------------------------------------


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
