"""The document pipeline: Source → read → (extract, normalize, chunk in worker processes) →
embed a group → write it (upsert, record, clean up) → deletions of vanished documents.

``stream_events()`` is the one primitive; everything else collects it. Stages are connected by
bounded queues, so a slow embedder or store slows the scan instead of filling memory. The queue
between embedding and writing also tells a rate-limited embedder whether the writes keep up
(``GroupCommitter._observe`` says why that queue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from datetime import UTC, datetime
from typing import Any

from headwater import home_settings
from headwater.config import Settings
from headwater.errors import ConfigError, HeadwaterError
from headwater.events import (
    DocumentCompleted,
    DocumentDeleted,
    DocumentEvent,
    DocumentFailed,
    DocumentSkipped,
    RunCompleted,
    RunStarted,
    WaitingForHome,
)
from headwater.homelock import home_lock
from headwater.lineage import Lineage
from headwater.models import normalize_relpath
from headwater.observability import span
from headwater.pipeline.commit import EmbeddedGroup, ReadyDocument
from headwater.pipeline.document_failures import first_error, stop_if_not_the_documents_fault
from headwater.pipeline.document_progress import ProgressReports
from headwater.pipeline.document_reading import ReadingSteps
from headwater.pipeline.document_run import END
from headwater.ports import Embedder, MetadataStore, Source, VectorStore

SOURCE_SPANS = "1"  # chunks carry their span in the source (stages.spans); older homes are re-prepared once


class DocumentPipeline:
    """Incremental, idempotent, crash-safe ingestion of one source into a vector store.

    Args:
        only: relative paths to (re)process without listing the source: each is indexed if it
            exists and deleted from the index if it does not; everything else is left alone
            (the stream worker, DLQ replay and ``verify --repair`` use this).
        embedder_lent: the embedder is open already and stays open after the run: its owner (a
            stream worker, one batch a run) opens and closes it once, so a local model loads once.
    """

    def __init__(
        self,
        source: Source,
        embedder: Embedder,
        vectors: VectorStore,
        metadata: MetadataStore,
        settings: Settings,
        *,
        only: Collection[str] | None = None,
        run_id: str = "",
        embedder_lent: bool = False,
        lineage: Lineage | None = None,
    ) -> None:
        self.source = source
        self.embedder = embedder
        self.vectors = vectors
        self.metadata = metadata
        self.settings = settings
        self.only = {normalize_relpath(r) for r in only} if only is not None else None
        self.run_id = run_id or _new_run_id()
        self.embedder_lent = embedder_lent
        self.lineage = lineage

    def stream_events(self, *, only: Collection[str] | None = None) -> AsyncGenerator[DocumentEvent, None]:
        """One run's events. ``only`` runs over just these paths (see the class), as a run of its
        own (a new run id): a stream worker runs one pipeline per source for each of its batches,
        one at a time (a pipeline's runs share its adapters, so they must not overlap)."""
        stream = self._stream(only)
        return self.lineage.observe(stream) if self.lineage is not None else stream

    async def _stream(self, only: Collection[str] | None) -> AsyncGenerator[DocumentEvent, None]:
        events: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)
        paths = {normalize_relpath(r) for r in only} if only is not None else None
        run_id = _new_run_id() if only is not None else None

        async def runner() -> None:
            try:
                await _DocumentRun(self, events.put, only=paths, run_id=run_id).execute()
            except asyncio.CancelledError:
                raise  # the consumer stopped listening: nobody waits for the end marker
            except BaseException:
                await events.put(END)  # the consumer is still reading: wake it to see the error
                raise
            await events.put(END)

        task = asyncio.create_task(runner())
        try:
            while (item := await events.get()) is not END:
                if isinstance(item, list):  # the skips of one scanned batch, in one queue slot
                    for event in item:
                        yield event
                else:
                    yield item
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def iter_results(
        self,
    ) -> AsyncIterator[DocumentCompleted | DocumentSkipped | DocumentFailed | DocumentDeleted]:
        # Closed explicitly when this view is closed: a generator left to the garbage collector
        # would keep its run going (and the home locked) after the consumer stopped listening.
        async with contextlib.aclosing(self.stream_events()) as events:
            async for event in events:
                if isinstance(event, DocumentCompleted | DocumentSkipped | DocumentFailed | DocumentDeleted):
                    yield event

    async def run_async(self) -> RunCompleted:
        final = None
        async with contextlib.aclosing(self.stream_events()) as events:
            async for event in events:
                if isinstance(event, RunCompleted):
                    final = event
        assert final is not None, "stream_events always ends with RunCompleted"
        return final

    def run(self) -> RunCompleted:
        return asyncio.run(self.run_async())


class _DocumentRun(ReadingSteps, ProgressReports):
    """One execution: the stages, their order, and the adapters opened and closed around them.

    The steps are inherited from their own modules (listing, reading, failures, progress), and
    share the state of ``document_run.RunState``.
    """

    async def execute(self) -> None:
        async with home_lock(self.s.home, wait=self.s.wait_for_home, on_wait=self._waiting):
            await self._execute()

    async def _waiting(self, holder: str) -> None:
        await self.emit(WaitingForHome(run_id=self.run_id, home=str(self.s.home), holder=holder))

    async def _execute(self) -> None:
        counting = self._count_ahead()  # first: the total is the first thing a progress bar shows
        try:
            await self._execute_counted()
        finally:
            if counting is not None and not counting.done():
                counting.cancel()

    async def _execute_counted(self) -> None:
        p = self.p
        await p.metadata.open()
        self.states.watch(p.embedder, "embedder")
        try:
            if not p.embedder_lent:
                await p.embedder.open()
            await self._check_settings()
            await self.emit(RunStarted(run_id=self.run_id, kind="documents", source=p.source.uri))
            ticker = asyncio.create_task(self._tick())
            try:
                with span("headwater.docs.run", run_id=self.run_id, source=p.source.uri) as run:
                    await self._stages()
                    if run is not None:
                        run.set_attributes({f"documents.{k}": v for k, v in self.counts.items()})
            except Exception:
                await self._release_claims()
                await self._flush_states()  # the breaker that opened: reported before the error
                raise
            except BaseException:
                await self._release_claims()
                raise
            finally:
                ticker.cancel()
            # The last progress, however short the run: one faster than the interval (a
            # no-change re-run, a small folder) still reports where it ended.
            await self._flush_states()
            await self.emit(self._progress_event())
            await self.emit(self._final())
        finally:
            self.states.close()
            self.pool.close()
            for started in (self._vectors_open, self._embedder_warm):
                if started is not None:
                    # Waited, not awaited: its error, if any, was raised where it was needed, and
                    # were it cancelled, awaiting it would end the run as "cancelled" (no end
                    # marker for the consumer: the command hung) instead of with its own error.
                    await asyncio.wait([started])
                    if not started.cancelled():
                        started.exception()
            if self._vectors_open is not None:
                await p.vectors.close()
            if not p.embedder_lent:
                await p.embedder.close()
            await p.metadata.close()

    async def _stages(self) -> None:
        """scan → prepare (concurrently) → embed → write, then the suspects one at a time, then
        what vanished from the source."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._scan())
                readers = [tg.create_task(self._prepare_loop()) for _ in range(self.s.concurrency)]
                committer = tg.create_task(self._commit_loop())
                writer = tg.create_task(self._write_loop())
                await asyncio.gather(*readers)
                await self.ready.put(END)
                await committer
                await writer
                await self.committer.flush()
        except ExceptionGroup as group:
            raise first_error(group) from None
        await self._prepare_suspects()
        await self.committer.flush()
        await self._delete_vanished()
        if self.spans_pending and self.only is None:
            await self.p.metadata.set_setting(self._spans_key, SOURCE_SPANS)
        if self.switching and self.only is None:  # the new index is complete: switch to it
            home_settings.record(self.s, self.p.embedder.id, self.p.embedder.dimensions)
            home_settings.retire(self.s.home, self.s.index_generation - 2)

    async def _check_settings(self) -> None:
        stored = await self.p.metadata.get_setting("embedder_id")
        if stored is not None and stored != self.p.embedder.id:
            msg = (
                f"this home was indexed with embedder {stored!r}, not {self.p.embedder.id!r}: "
                "index into a new --home (vectors of two embedders cannot share an index)"
            )
            raise ConfigError(msg)
        await self.p.metadata.set_setting("embedder_id", self.p.embedder.id)
        self.switching = home_settings.switches(self.s)
        if not self.switching:
            home_settings.record(self.s, self.p.embedder.id, self.p.embedder.dimensions)
        key = self.options.chunker_key
        # A new chunker configuration re-keys every chunk: the unchanged-file fast path must not apply.
        was = await self.p.metadata.get_setting("chunker_key")
        self.force = was not in (None, key)
        await self.p.metadata.set_setting("chunker_key", key)
        # A home indexed before chunks carried their source span: every document is prepared
        # again once (same chunk ids, so nothing is embedded; only the positions are rewritten).
        if await self.p.metadata.get_setting(self._spans_key) != SOURCE_SPANS:
            if was is None:
                await self.p.metadata.set_setting(self._spans_key, SOURCE_SPANS)
            else:
                self.force = self.spans_pending = True

    @property
    def _spans_key(self) -> str:
        return f"source_spans:{self.p.source.uri}"

    async def _prepare_loop(self) -> None:
        while (batch := await self.work.get()) is not END:
            for ready in await self._prepare_batch(batch):
                await self.ready.put(ready)

    async def _prepare_suspects(self) -> None:
        """Documents an earlier run claimed but never finished go last, one at a time: if one of
        them kills the process again, only its own attempt counter moves."""
        for work in self.suspects:
            for ready in await self._prepare_batch([work]):
                await self._commit([ready])

    async def _commit_loop(self) -> None:
        """Gather prepared documents into groups and embed them; the writer takes it from there.
        (If this fails, the task group cancels the writer: no end marker is needed then.)"""
        done = False
        while not done:
            group: list[ReadyDocument] = []
            chunks = 0
            while chunks < self.s.commit_batch_chunks:
                try:
                    async with asyncio.timeout(0.05 if group else None):  # not wait_for: see CpuPool.run
                        item = await self.ready.get()
                except TimeoutError:
                    break
                if item is END:
                    done = True
                    break
                group.append(item)
                chunks += len(item.prepared.chunks)
            if group and (planned := await self._embed(group)) is not None:
                await self.embedded.put(planned)
        await self.embedded.put(END)

    async def _write_loop(self) -> None:
        while (planned := await self.embedded.get()) is not END:
            await self._write(planned)

    async def _commit(self, group: list[ReadyDocument]) -> None:
        """Embed and write one group on its own (suspects, one document at a time)."""
        if (planned := await self._embed(group)) is not None:
            await self._write(planned)

    async def _embed(self, group: list[ReadyDocument]) -> EmbeddedGroup | None:
        try:
            return await self.committer.embed(group)
        except HeadwaterError as exc:
            stop_if_not_the_documents_fault(exc)
            await self._fail_group(group, exc)
            return None

    async def _write(self, planned: EmbeddedGroup) -> None:
        try:
            await self.vectors_ready()
            completed = await self.committer.write(planned)
        except HeadwaterError as exc:
            stop_if_not_the_documents_fault(exc)
            await self._fail_group(planned.group, exc)
            return
        for event in completed:
            self.claimed.discard(event.doc_id)
            self.counts[event.outcome] += 1
            self.counts["chunks_deleted"] += event.chunks_deleted
            self.progress.completed += 1
            self.in_flight -= 1
            await self.emit(event.__class__(**{**_fields(event), "run_id": self.run_id}))


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__struct_fields__}


def _new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
