"""One document run's shared state: its queues, counters, claims and open adapters, and the
outlet its events leave by.

The run is one object whose steps live in modules of their own (``document_listing``,
``document_reading``, ``document_failures``, ``document_progress``, orchestrated by
``documents``). They share this state rather than passing it around: the hot loops (a
no-change re-run classifies every listed file) read it as plain attributes, as they did when
they were one class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headwater.events import Event
from headwater.models import DocState, SourceEntry
from headwater.pipeline.adapter_states import AdapterStates
from headwater.pipeline.commit import GroupCommitter
from headwater.pipeline.cpu_pool import CpuPool
from headwater.pipeline.progress import Progress
from headwater.pipeline.retry import RetryPolicy
from headwater.ports import LoadsModel
from headwater.stages.chunk import chunker_key
from headwater.stages.prepare import PrepareOptions

if TYPE_CHECKING:
    from headwater.pipeline.documents import DocumentPipeline

END = object()  # the end marker of every queue of a run
WRITE_BACKLOG_GROUPS = 2  # embedded groups waiting for their write: 1 is jitter, 2 is congestion


@dataclass(slots=True)
class Work:
    """A listed document that needs reading: what the store knew of it, and its claims."""

    entry: SourceEntry
    doc_id: str
    before: DocState | None
    attempts: int


class RunState:
    """One execution: owns the queues, the counters and the open adapters."""

    def __init__(
        self,
        pipeline: DocumentPipeline,
        emit: Callable[[Any], Any],
        *,
        only: set[str] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.p = pipeline
        self.only = only if only is not None else pipeline.only
        self.run_id = run_id or pipeline.run_id
        self.s = pipeline.settings
        self._emit = emit
        self.progress = Progress()
        self.counts: dict[str, int] = dict.fromkeys(
            ["seen", "added", "updated", "unchanged", "deleted", "skipped", "failed", "chunks_deleted"], 0
        )
        self.work: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * self.s.concurrency)
        self.ready: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.s.queue_size)
        self.embedded: asyncio.Queue[Any] = asyncio.Queue(maxsize=WRITE_BACKLOG_GROUPS)
        self.in_flight = 0
        self.suspects: list[Work] = []
        self.claimed: set[str] = set()  # claimed by this run and not finished yet
        self._vectors_open: asyncio.Future[None] | None = None
        self._embedder_warm: asyncio.Future[None] | None = None
        self._starting = asyncio.Lock()
        self._pool_started = False
        self.force = False
        self.spans_pending = False
        self.switching = False  # building the home's next index generation (home_settings.switches)
        self.states = AdapterStates(self.run_id, wake=self._wake_states)
        self._counted = asyncio.Event()  # the source's count arrived: report it now
        self._state_flush: asyncio.Future[None] | None = None
        self.found: set[str] = set()
        self.pool = CpuPool(self.s.workers, self.s.extract_timeout_seconds)
        self.options = PrepareOptions(
            chunk_size_chars=self.s.chunk_size_chars,
            chunk_overlap_chars=self.s.chunk_overlap_chars,
            pii_scrub=self.s.pii_scrub,
            pdf_max_pages=self.s.pdf_max_pages,
            chunker_key=chunker_key(self.s.chunk_size_chars, self.s.chunk_overlap_chars, self.s.pii_scrub),
        )
        self.committer = GroupCommitter(
            pipeline.embedder,
            pipeline.metadata,
            pipeline.vectors,
            pipeline.metadata,
            batch_size=self.s.embed_batch_size,
            concurrency=self.s.concurrency,
            retry=RetryPolicy(self.s.retry_attempts, self.s.retry_initial_seconds, self.s.retry_max_seconds),
            backlog=lambda: (self.embedded.qsize(), WRITE_BACKLOG_GROUPS),
        )

    async def emit(self, event: Event) -> None:
        await self._emit(event)

    async def emit_all(self, events: Sequence[Event]) -> None:
        """Many events as one queue item: a no-change re-run emits one per file, and a queue
        round trip each was a third of its time."""
        if events:
            await self._emit(events)

    def _wake_states(self) -> None:
        """An adapter reported a change (from the committer's embed call, say): emit it now,
        from a task of its own, not from the adapter's call stack."""
        if self._state_flush is None or self._state_flush.done():
            self._state_flush = asyncio.ensure_future(self._drain_states())

    async def _drain_states(self) -> None:
        while changes := self.states.take():
            for change in changes:
                await self.emit(change)

    async def _flush_states(self) -> None:
        """Every change reported so far is emitted when this returns (before the run's last
        event or its error): the task a change started, then anything left."""
        if self._state_flush is not None and not self._state_flush.done():
            await asyncio.shield(self._state_flush)
        await self._drain_states()

    def warm_vectors(self, *, model: bool = True) -> None:
        """Open the vector store in the background once there is work: the first write does not
        wait for it, and a run with nothing to do never pays for it (lancedb imports in ~1 s).
        An embedder that loads a local model (ports.LoadsModel) starts loading it
        then too: torch and sentence-transformers import in ~5 s, while the first documents
        are read and extracted."""
        if self._vectors_open is None:
            self._vectors_open = asyncio.ensure_future(self.p.vectors.open(self.p.embedder.dimensions))
        if model and self._embedder_warm is None and isinstance(self.p.embedder, LoadsModel):
            self._embedder_warm = asyncio.ensure_future(self.p.embedder.warm())

    async def vectors_ready(self) -> None:
        """The store, open; not the model: deleting chunks of vanished or failed documents
        embeds nothing (a delete-only run with MiniLM spent 8 s loading torch for nothing)."""
        self.warm_vectors(model=False)
        assert self._vectors_open is not None
        await asyncio.shield(self._vectors_open)  # a cancelled writer must not cancel the opening
