"""Group commit: embed what the cache lacks, write vectors, record state, then clean up.

The order is the crash-safety argument (DESIGN §4): vectors are written before the metadata
says so, and stale vectors are deleted only after the replacement is committed. A document is
``done`` only after its cleanup, so a crash anywhere leaves it non-done and the next run redoes
the (idempotent) steps.

``embed`` and ``write`` are separate steps so the document pipeline can embed the next group
while the previous one is written, with a bounded queue of embedded groups between them. That
queue is the congestion signal of the embedder's rate limiter (``backlog``): see ``_observe``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headwater.events import DocumentCompleted
from headwater.models import Chunk, ChunkKey, DocState, SourceEntry, Vectors
from headwater.observability import span
from headwater.pipeline.faults import crash_point
from headwater.pipeline.retry import RetryPolicy, with_retries
from headwater.ports import DocumentLedger, Embedder, EmbeddingCache, RateLimited, VectorWriter
from headwater.stages.chunk import TextChunk
from headwater.stages.prepare import PreparedDocument

UPSERT_SLICE = 4096


@dataclass(frozen=True, slots=True)
class ReadyDocument:
    entry: SourceEntry
    doc_id: str
    source: str
    before: DocState | None
    content_hash: str
    prepared: PreparedDocument
    attempts: int = 1  # claims since the document was last finished; > 1: an earlier one may have written


@dataclass(frozen=True, slots=True)
class EmbeddedGroup:
    """A group whose new chunks have vectors, waiting to be written."""

    group: Sequence[ReadyDocument]
    old: dict[str, list[ChunkKey]]
    new: list[tuple[ReadyDocument, TextChunk]]
    kept: list[tuple[ReadyDocument, TextChunk]]
    vectors: dict[str, Vectors]
    embedded: set[str]


@dataclass
class CommitStats:
    embedded: int = 0
    reused: int = 0
    embed_calls: int = 0


class GroupCommitter:
    """Embeds and writes groups of prepared documents.

    Args:
        backlog: ``(depth, capacity)`` of the queue of embedded groups waiting for their write,
            reported before each embed call to an embedder that adapts its rate (the optional
            ``RateLimited`` port; the Embedder port does not require it).
    """

    def __init__(
        self,
        embedder: Embedder,
        cache: EmbeddingCache,
        vectors: VectorWriter,
        state: DocumentLedger,
        *,
        batch_size: int,
        concurrency: int,
        retry: RetryPolicy,
        backlog: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.embedder = embedder
        self.backlog = backlog
        self.cache = cache
        self.vectors = vectors
        self.state = state
        self.batch_size = batch_size
        self.retry = retry
        self.limit = asyncio.Semaphore(concurrency)
        self.stats = CommitStats()
        self._caching: asyncio.Future[None] | None = None

    async def flush(self) -> None:
        """Wait for the embedding-cache write in flight, if any."""
        if self._caching is not None:
            caching, self._caching = self._caching, None
            await caching

    async def vectors_for(self, hashes_to_text: dict[str, str]) -> tuple[dict[str, Vectors], set[str]]:
        """Vectors for every hash: from the cache, else embedded (in concurrent batches) and cached."""
        cacheable = self.embedder.cacheable
        found = await self.cache.get_vectors(self.embedder.id, list(hashes_to_text)) if cacheable else {}
        missing = [h for h in hashes_to_text if h not in found]
        self.stats.reused += len(found)
        batches = [missing[i : i + self.batch_size] for i in range(0, len(missing), self.batch_size)]
        results = await asyncio.gather(*(self._embed([hashes_to_text[h] for h in b]) for b in batches))
        fresh: dict[str, Vectors] = {}
        for batch, matrix in zip(batches, results, strict=True):
            fresh.update(zip(batch, matrix, strict=True))
        if fresh and cacheable:
            # Caching is off the critical path (one write in flight): losing it costs only a re-embed.
            await self.flush()
            self._caching = asyncio.ensure_future(self.cache.put_vectors(self.embedder.id, fresh))
        self.stats.embedded += len(fresh)
        found.update(fresh)
        return found, set(fresh)

    async def _embed(self, texts: list[str]) -> Vectors:
        async with self.limit:
            self._observe()
            self.stats.embed_calls += 1
            matrix = await with_retries(lambda: self.embedder.embed(texts), self.retry)
        _check_vectors(matrix, len(texts), self.embedder)
        return matrix

    def _observe(self) -> None:
        """Tell a rate-limited embedder how full the queue *after* it is (seed 004's rule: above
        80% halve the rate, below 30% raise it by a fifth).

        Why that queue and not the one before it (prepared documents waiting to be embedded):
        the rule slows the limited stage down when its queue is congested, which only makes
        sense for the queue that stage *feeds*. When the embedder is the bottleneck the queue
        before it is full; halving the rate then would fill it more, halve again, and settle at
        the minimum rate — a death spiral. The queue after it is full only when the writes fall
        behind, where embedding faster only piles up vectors nobody can store yet; it is empty
        when the writer waits on the embedder, where a faster rate helps (and a 429 halves it
        again). The queue stays bounded either way: backpressure bounds it, the limiter keeps
        the external server from being pushed beyond what the rest of the pipeline absorbs.
        """
        if isinstance(self.embedder, RateLimited) and self.backlog is not None:
            depth, capacity = self.backlog()
            self.embedder.observe_queue(depth, capacity)

    async def commit(self, group: Sequence[ReadyDocument]) -> list[DocumentCompleted]:
        """Embed and write one group (no overlap with other groups)."""
        return await self.write(await self.embed(group))

    async def embed(self, group: Sequence[ReadyDocument]) -> EmbeddedGroup:
        """Vectors for the group's new chunks (cached or embedded); nothing is written yet."""
        old = await self.state.get_chunks([r.doc_id for r in group if r.before is not None])
        retained = {doc_id: {k.chunk_id for k in keys} for doc_id, keys in old.items()}
        new = [
            (r, c) for r in group for c in r.prepared.chunks if c.chunk_id not in retained.get(r.doc_id, ())
        ]
        kept = [(r, c) for r in group for c in r.prepared.chunks if c.chunk_id in retained.get(r.doc_id, ())]
        texts = {c.chunk_hash: c.text for _, c in new}
        with span("headwater.docs.embed", documents=len(group), chunks=len(new), texts=len(texts)) as current:
            vectors, embedded = await self.vectors_for(texts)
            if current is not None:
                current.set_attribute("embedded", len(embedded))
        self.stats.reused += len(kept)
        return EmbeddedGroup(group, old, new, kept, vectors, embedded)

    async def write(self, planned: EmbeddedGroup) -> list[DocumentCompleted]:
        """Upsert, record, clean up and finish, in the crash-safe order.

        A document never seen before (no state: never claimed, so no earlier attempt wrote
        vectors for it) has nothing stale to clean up: it is recorded ``done`` in the commit
        itself, which saves a cold run one durable transaction (an fsync) per group."""
        group, old, kept = planned.group, planned.old, planned.kept
        with span("headwater.docs.write", documents=len(group), chunks=len(planned.new), moved=len(kept)):
            await self._upsert(planned.new, planned.vectors)
            if kept:  # unchanged text, maybe moved: rewrite positions, never the vectors
                await with_retries(
                    functools.partial(self.vectors.update_positions, [_row(r, c) for r, c in kept]),
                    self.retry,
                )
        crash_point("after_upsert")
        with span("headwater.docs.commit", documents=len(group)):
            await self._record(planned)
        return [_completed(r, old.get(r.doc_id, []), planned.embedded) for r in group]

    async def _record(self, planned: EmbeddedGroup) -> None:
        """The state commit, then the stale chunks' cleanup and the documents' finish."""
        group = planned.group
        await self.state.commit(
            [_state_after(r, "cleanup" if r.before is not None else "done") for r in group],
            {
                r.doc_id: [
                    ChunkKey(doc_id=r.doc_id, chunk_id=c.chunk_id, chunk_hash=c.chunk_hash)
                    for c in r.prepared.chunks
                ]
                for r in group
            },
        )
        crash_point("after_commit")
        keep = {r.doc_id: {c.chunk_id for c in r.prepared.chunks} for r in group if r.before is not None}
        await self.vectors.delete_stale(keep)
        crash_point("after_cleanup")
        if unfinished := [r.doc_id for r in group if r.before is not None]:
            await self.state.finish(unfinished)

    async def _upsert(
        self, new: Sequence[tuple[ReadyDocument, TextChunk]], vectors: dict[str, Vectors]
    ) -> None:
        """New chunk ids of documents that ended clean last time cannot exist yet: a cheap append.
        Anything else (a crash left it unfinished) may: merge by id."""
        for fresh in (True, False):
            rows = [_row(r, c) for r, c in new if _appendable(r) == fresh]
            for start in range(0, len(rows), UPSERT_SLICE):
                part = rows[start : start + UPSERT_SLICE]
                matrix = _stack([vectors[c.chunk_hash] for c in part])
                await with_retries(
                    functools.partial(self.vectors.upsert, part, matrix, fresh=fresh), self.retry
                )
                crash_point("mid_upsert")


def _appendable(r: ReadyDocument) -> bool:
    return r.attempts <= 1 and (r.before is None or r.before.status == "done")


def _row(r: ReadyDocument, c: TextChunk) -> Chunk:
    return Chunk(
        doc_id=r.doc_id,
        chunk_id=c.chunk_id,
        uri=r.entry.relpath,
        offset=c.offset,
        length=c.length,
        chunk_hash=c.chunk_hash,
        text=c.text,
        source_start=c.source_start,
        source_end=c.source_end,
        page=c.page,
        page_end=c.page_end,
    )


def _stack(rows: list[Vectors]) -> Vectors:
    import numpy as np  # lazily: a run with nothing to embed never loads numpy

    return np.stack(rows).astype(np.float32)


def _check_vectors(matrix: Vectors, n: int, embedder: Embedder) -> None:
    import numpy as np

    from headwater.errors import PermanentError

    if matrix.shape != (n, embedder.dimensions):
        msg = f"embedder {embedder.id} returned shape {matrix.shape}, expected ({n}, {embedder.dimensions})"
        raise PermanentError(msg)
    if not np.isfinite(matrix).all():
        msg = f"embedder {embedder.id} returned NaN or infinite values"
        raise PermanentError(msg)


def _state_after(r: ReadyDocument, status: str) -> DocState:
    version = (r.before.version if r.before else 0) + 1
    return DocState(
        doc_id=r.doc_id,
        source=r.source,
        uri=r.entry.relpath,
        content_hash=r.content_hash,
        size=r.entry.size,
        mtime_ns=r.entry.mtime_ns,
        status=status,
        attempts=0,
        error_count=0,
        version=version,
    )


def _completed(r: ReadyDocument, old: list[ChunkKey], embedded: set[str]) -> DocumentCompleted:
    new_ids = {c.chunk_id for c in r.prepared.chunks}
    added = r.before is None or r.before.version == 0  # never indexed successfully before
    return DocumentCompleted(
        doc_id=r.doc_id,
        uri=r.entry.relpath,
        outcome="added" if added else "updated",
        chunks=len(r.prepared.chunks),
        chunks_embedded=len({c.chunk_hash for c in r.prepared.chunks} & embedded),
        chunks_deleted=len({k.chunk_id for k in old} - new_ids),
        pii_redactions=sum(r.prepared.redactions.values()),
    )
