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
import logging
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater import home_settings
from headwater.config import Settings
from headwater.errors import (
    ConfigError,
    EmbedderUnavailable,
    HeadwaterError,
    InputError,
    RetryableError,
    disk_full,
)
from headwater.events import (
    BatchProgress,
    DocumentCompleted,
    DocumentDeleted,
    DocumentEvent,
    DocumentFailed,
    DocumentSkipped,
    DocumentStarted,
    Event,
    RunCompleted,
    RunStarted,
    WaitingForHome,
)
from headwater.homelock import home_lock
from headwater.models import (
    DeadLetter,
    DocState,
    SourceEntry,
    Version,
    make_doc_id,
    normalize_relpath,
    sha256_hex,
)
from headwater.pipeline.adapter_states import AdapterStates
from headwater.pipeline.commit import EmbeddedGroup, GroupCommitter, ReadyDocument
from headwater.pipeline.cpu_pool import CpuPool
from headwater.pipeline.faults import crash_point
from headwater.pipeline.progress import Progress
from headwater.pipeline.retry import RetryPolicy
from headwater.ports import (
    Countable,
    Embedder,
    LoadsModel,
    MetadataStore,
    RateLimited,
    Source,
    VectorStore,
)
from headwater.stages.chunk import chunker_key
from headwater.stages.prepare import PrepareFailure, PrepareOptions, prepare_documents

_END = object()
SKIP_REASONS = {"done": "unchanged", "failed": "previously_failed"}  # by recorded status
SCAN_BATCH = 1024
PREPARE_BATCH_DOCS = 32  # documents per round trip to a worker process
PREPARE_BATCH_BYTES = 4 * 1024 * 1024
log = logging.getLogger(__name__)
SOURCE_SPANS = "1"  # chunks carry their span in the source (stages.spans); older homes are re-prepared once
WRITE_BACKLOG_GROUPS = 2  # embedded groups waiting for their write: 1 is jitter, 2 is congestion


@dataclass(slots=True)
class _Work:
    entry: SourceEntry
    doc_id: str
    before: DocState | None
    attempts: int


async def _pages(entries: list[SourceEntry]) -> AsyncIterator[list[SourceEntry]]:
    for start in range(0, len(entries), SCAN_BATCH):
        yield entries[start : start + SCAN_BATCH]


class DocumentPipeline:
    """Incremental, idempotent, crash-safe ingestion of one source into a vector store.

    Args:
        only: relative paths to (re)process without listing the source: each is indexed if it
            exists and deleted from the index if it does not; everything else is left alone
            (the stream worker, DLQ replay and ``verify --repair`` use this).
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
    ) -> None:
        self.source = source
        self.embedder = embedder
        self.vectors = vectors
        self.metadata = metadata
        self.settings = settings
        self.only = {normalize_relpath(r) for r in only} if only is not None else None
        self.run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")

    async def stream_events(self) -> AsyncGenerator[DocumentEvent, None]:
        events: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)

        async def runner() -> None:
            try:
                await _DocumentRun(self, events.put).execute()
            except asyncio.CancelledError:
                raise  # the consumer stopped listening: nobody waits for the end marker
            except BaseException:
                await events.put(_END)  # the consumer is still reading: wake it to see the error
                raise
            await events.put(_END)

        task = asyncio.create_task(runner())
        try:
            while (item := await events.get()) is not _END:
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


class _DocumentRun:
    """One execution: owns the queues, the counters and the open adapters."""

    def __init__(self, pipeline: DocumentPipeline, emit: Callable[[Any], Any]) -> None:
        self.p = pipeline
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
        self.suspects: list[_Work] = []
        self.claimed: set[str] = set()  # claimed by this run and not finished yet
        self._vectors_open: asyncio.Future[None] | None = None
        self._embedder_warm: asyncio.Future[None] | None = None
        self._starting = asyncio.Lock()
        self._pool_started = False
        self.force = False
        self.spans_pending = False
        self.switching = False  # building the home's next index generation (home_settings.switches)
        self.states = AdapterStates(pipeline.run_id, wake=self._wake_states)
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

    async def execute(self) -> None:
        async with home_lock(self.s.home, wait=self.s.wait_for_home, on_wait=self._waiting):
            await self._execute()

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

    async def _waiting(self, holder: str) -> None:
        await self.emit(WaitingForHome(run_id=self.p.run_id, home=str(self.s.home), holder=holder))

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
            await p.embedder.open()
            await self._check_settings()
            await self.emit(RunStarted(run_id=p.run_id, kind="documents", source=p.source.uri))
            ticker = asyncio.create_task(self._tick())
            try:
                await self._stages()
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
                await self.ready.put(_END)
                await committer
                await writer
                await self.committer.flush()
        except ExceptionGroup as group:
            raise _first_error(group) from None
        await self._prepare_suspects()
        await self.committer.flush()
        await self._delete_vanished()
        if self.spans_pending and self.p.only is None:
            await self.p.metadata.set_setting(self._spans_key, SOURCE_SPANS)
        if self.switching and self.p.only is None:  # the new index is complete: switch to it
            home_settings.record(self.s, self.p.embedder.id, self.p.embedder.dimensions)
            home_settings.retire(self.s.home, self.s.index_generation - 2)

    async def _release_claims(self) -> None:
        """A run that stops (a stop request, an embedder outage, a full disk) was not killed by
        the documents it had claimed: their attempts are taken back, so the next run does them
        as usual rather than one at a time as suspects, and no number of stops dead-letters
        them. Best effort: if even this fails (the disk is full), they are only suspects."""
        if self.claimed:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.p.metadata.release(sorted(self.claimed)))

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

    # -- scan ---------------------------------------------------------------------------------
    async def _scan(self) -> None:
        if self.p.only is not None:
            found = await self.p.source.lookup(sorted(self.p.only))
            self.found = {e.relpath for e in found}
            listing: AsyncIterator[list[SourceEntry]] = _pages(found)
        else:
            listing = self.p.source.scan()
        await self._classify_all(listing)
        self.progress.listing_done = True
        # Only on success: a failed or cancelled scan takes its task group's readers down with
        # it, and an end marker put into their full queue then would wait for ever.
        for _ in range(self.s.concurrency):
            await self.work.put(_END)

    def _count_ahead(self) -> asyncio.Task[None] | None:
        """The source's count, for the progress total while the listing is paced by the work."""
        source = self.p.source
        if self.p.only is not None or not isinstance(source, Countable):
            return None

        async def count() -> None:
            try:
                self.progress.counted = await source.count()
                self._counted.set()
            except Exception as exc:  # noqa: BLE001 - an estimate: the listing's own total comes later
                log.debug("counting %s failed: %r", source.uri, exc)

        return asyncio.create_task(count())

    async def _classify_all(self, listing: AsyncIterator[list[SourceEntry]]) -> None:
        """A batch's lookups run on the store's thread while the batch before it is classified
        (a no-change re-run is nothing but these two, and they took turns)."""
        ahead: asyncio.Future[dict[str, Version]] | None = None
        batch_ahead: list[SourceEntry] = []
        try:
            async for batch in listing:
                previous, batch_previous = ahead, batch_ahead
                ahead, batch_ahead = asyncio.ensure_future(self._lookup(batch)), batch
                if previous is not None:
                    await self._classify(batch_previous, await previous)
            if ahead is not None:
                await self._classify(batch_ahead, await ahead)
        finally:
            if ahead is not None and not ahead.done():  # stopped by an error or a cancellation
                ahead.cancel()

    async def _lookup(self, batch: list[SourceEntry]) -> dict[str, Version]:
        relpaths = [e.relpath for e in batch]
        await self.p.metadata.note_seen(relpaths)
        return await self.p.metadata.versions(self.p.source.uri, relpaths)

    async def _classify(self, batch: list[SourceEntry], versions: dict[str, Version]) -> None:
        self.progress.listed += len(batch)
        self.counts["seen"] += len(batch)
        todo: list[tuple[SourceEntry, str]] = []
        skips: list[DocumentSkipped] = []
        for entry in batch:
            version = versions.get(entry.relpath)
            doc_id = version.doc_id if version is not None else make_doc_id(entry.relpath)
            if entry.problem is not None:
                skips.append(self._skipped(doc_id, entry.relpath, entry.problem))
            elif reason := self._fast_skip(entry, version):
                skips.append(self._skipped(doc_id, entry.relpath, reason))
            else:
                todo.append((entry, doc_id))
        await self.emit_all(skips)
        states = await self.p.metadata.get_documents([doc_id for _, doc_id in todo]) if todo else {}
        batch_works: list[_Work] = []
        batch_bytes = 0
        for entry, doc_id in todo:
            work = _Work(entry, doc_id, states.get(doc_id), 0)
            if work.before is not None and work.before.attempts > 0 and work.before.status == "pending":
                self.suspects.append(work)
                continue
            batch_works.append(work)
            batch_bytes += entry.size
            if len(batch_works) >= PREPARE_BATCH_DOCS or batch_bytes >= PREPARE_BATCH_BYTES:
                await self.work.put(batch_works)
                batch_works, batch_bytes = [], 0
        if batch_works:
            await self.work.put(batch_works)

    def _fast_skip(self, entry: SourceEntry, version: Version | None) -> str | None:
        """Unchanged size and mtime: not even read (the no-change re-run never opens a file).
        A new chunker re-keys every chunk (``force``) but cannot mend an input that failed: an
        unchanged bad file is dead-lettered once, not once per settings change."""
        if version is None or version.size != entry.size or version.mtime_ns != entry.mtime_ns:
            return None
        if self.force and version.status != "failed":
            return None
        return SKIP_REASONS.get(version.status)

    def _skipped(self, doc_id: str, uri: str, reason: str) -> DocumentSkipped:
        """Count one skip and make its event."""
        if reason == "unchanged":
            self.counts["unchanged"] += 1
        else:
            self.counts["skipped"] += 1
        self.progress.skipped += 1
        return DocumentSkipped(run_id=self.p.run_id, doc_id=doc_id, uri=uri, reason=reason)

    # -- read + prepare -----------------------------------------------------------------------------
    async def _prepare_loop(self) -> None:
        while (batch := await self.work.get()) is not _END:
            for ready in await self._prepare_batch(batch):
                await self.ready.put(ready)

    async def _prepare_suspects(self) -> None:
        """Documents an earlier run claimed but never finished go last, one at a time: if one of
        them kills the process again, only its own attempt counter moves."""
        for work in self.suspects:
            for ready in await self._prepare_batch([work]):
                await self._commit([ready])

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

    async def _start_pool(self) -> None:
        """Fork the extraction workers before anything can start lancedb's threads (see
        ``CpuPool.start``): a read error of a known document opens the vector store to drop
        its chunks, so this comes before the first read."""
        if not self._pool_started:
            async with self._starting:
                if not self._pool_started:
                    await self.pool.start()
                    self._pool_started = True

    async def _prepare_batch(self, batch: list[_Work]) -> list[ReadyDocument]:
        await self._start_pool()
        self.in_flight += len(batch)
        if self.s.document_started_events:
            run_id = self.p.run_id
            started = [DocumentStarted(run_id=run_id, doc_id=w.doc_id, uri=w.entry.relpath) for w in batch]
            await self.emit_all(started)
        loaded = await self._read_changed(batch)
        if not loaded:
            return []  # only touched (same bytes): no vector store, no model needed
        self.warm_vectors()
        # Claimed just before the work: an input that kills the process counts an attempt and
        # reaches the DLQ after max_attempts instead of looping (suspects are retried alone).
        claims = await self.p.metadata.claim(
            [(w.doc_id, self.p.source.uri, w.entry.relpath) for w, _, _ in loaded]
        )
        self.claimed.update(claims)
        todo = []
        for work, data, content_hash in loaded:
            work.attempts = claims[work.doc_id]
            if work.attempts > self.s.max_attempts:
                msg = (
                    f"{work.entry.relpath}: gave up after {work.attempts - 1} attempts that never finished "
                    "(the input crashed or hung the worker)"
                )
                await self._fail(work, "extract", InputError(msg), status="failed", content_hash=content_hash)
            else:
                todo.append((work, data, content_hash))
        return await self._extract(todo)

    async def _read_changed(self, batch: list[_Work]) -> list[tuple[_Work, bytes, str]]:
        """Read and hash; a document whose bytes did not change is skipped (only its mtime moved:
        a checkout, a restore, a ``touch``). Its new size and mtime are recorded for the whole
        batch in one transaction, so the next run skips it unread."""
        loaded = []
        touched: list[DocState] = []
        skips: list[DocumentSkipped] = []
        contents = await self.p.source.read_many([w.entry for w in batch], self.s.max_file_bytes)
        for work, data in zip(batch, contents, strict=True):
            if isinstance(data, InputError):
                await self._fail(work, "read", data, status="failed")
                continue
            content_hash = sha256_hex(data)
            before = work.before
            unchanged = (
                before is not None
                and before.content_hash == content_hash
                and (not self.force or before.status == "failed")
            )
            if before is not None and unchanged and before.status in SKIP_REASONS:
                touched.append(
                    msgspec.structs.replace(before, size=work.entry.size, mtime_ns=work.entry.mtime_ns)
                )
                skips.append(self._skipped(work.doc_id, work.entry.relpath, SKIP_REASONS[before.status]))
                continue
            loaded.append((work, data, content_hash))
        if touched:
            await self.p.metadata.touch(touched)
            self.in_flight -= len(touched)
            await self.emit_all(skips)
        return loaded

    async def _extract(self, todo: list[tuple[_Work, bytes, str]]) -> list[ReadyDocument]:
        if not todo:
            return []
        for work, _, _ in todo:
            crash_point("extract", work.entry.relpath)
        items = [(w.doc_id, w.entry.relpath, data) for w, data, _ in todo]
        try:
            results = await self.pool.run(todo[0][0].entry.relpath, prepare_documents, items, self.options)
        except InputError as exc:  # the batch hung or crashed its worker: find the culprit alone
            if len(todo) > 1:
                return [ready for one in todo for ready in await self._extract([one])]
            await self._fail(todo[0][0], "extract", exc, status="failed", content_hash=todo[0][2])
            return []
        ready = []
        for (work, _, content_hash), result in zip(todo, results, strict=True):
            if isinstance(result, PrepareFailure):
                status = "failed" if result.bad_input else "error"
                await self._fail(work, "extract", result, status=status, content_hash=content_hash)
                continue
            crash_point("after_extract")
            ready.append(
                ReadyDocument(
                    entry=work.entry,
                    doc_id=work.doc_id,
                    source=self.p.source.uri,
                    before=work.before,
                    content_hash=content_hash,
                    prepared=result,
                    attempts=work.attempts,
                )
            )
        return ready

    # -- commit ---------------------------------------------------------------------------------------
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
                if item is _END:
                    done = True
                    break
                group.append(item)
                chunks += len(item.prepared.chunks)
            if group and (planned := await self._embed(group)) is not None:
                await self.embedded.put(planned)
        await self.embedded.put(_END)

    async def _write_loop(self) -> None:
        while (planned := await self.embedded.get()) is not _END:
            await self._write(planned)

    async def _commit(self, group: list[ReadyDocument]) -> None:
        """Embed and write one group on its own (suspects, one document at a time)."""
        if (planned := await self._embed(group)) is not None:
            await self._write(planned)

    async def _embed(self, group: list[ReadyDocument]) -> EmbeddedGroup | None:
        try:
            return await self.committer.embed(group)
        except HeadwaterError as exc:
            _stop_if_not_the_documents_fault(exc)
            await self._fail_group(group, exc)
            return None

    async def _fail_group(self, group: Sequence[ReadyDocument], exc: HeadwaterError) -> None:
        status = "error" if isinstance(exc, RetryableError) else "failed"
        for ready in group:
            await self._fail(
                _Work(ready.entry, ready.doc_id, ready.before, 0),
                "commit",
                exc,
                status=status,
                content_hash=ready.content_hash,
                delete_chunks=False,
            )

    async def _write(self, planned: EmbeddedGroup) -> None:
        try:
            await self.vectors_ready()
            completed = await self.committer.write(planned)
        except HeadwaterError as exc:
            _stop_if_not_the_documents_fault(exc)
            await self._fail_group(planned.group, exc)
            return
        for event in completed:
            self.claimed.discard(event.doc_id)
            self.counts[event.outcome] += 1
            self.counts["chunks_deleted"] += event.chunks_deleted
            self.progress.completed += 1
            self.in_flight -= 1
            await self.emit(event.__class__(**{**_fields(event), "run_id": self.p.run_id}))

    # -- failures and deletions --------------------------------------------------------------------------
    async def _fail(
        self,
        work: _Work,
        stage: str,
        error: Exception | PrepareFailure,
        *,
        status: str,
        content_hash: str | None = None,
        delete_chunks: bool = True,
    ) -> None:
        """Dead-letter one document. Its old chunks go too: a clean run would not index bad input."""
        p = self.p
        self.in_flight -= 1
        self.claimed.discard(work.doc_id)
        attempts = max(work.attempts, 1)
        if isinstance(error, PrepareFailure):
            error_type, message, tb = error.error_type, error.message, error.traceback
        else:
            error_type, message = type(error).__name__, str(error)
            tb = "".join(traceback.format_exception(error))
        letter = DeadLetter(
            id=0,
            kind="document",
            input_ref=work.entry.relpath,
            source=p.source.uri,
            stage=stage,
            error_type=error_type,
            message=message,
            attempts=attempts,
            traceback=tb,
            created_at="",
        )
        delete_chunks = delete_chunks and work.before is not None and work.before.content_hash is not None
        if delete_chunks:
            await self.vectors_ready()
            await p.vectors.delete_stale({work.doc_id: set()})
        state = DocState(
            doc_id=work.doc_id,
            source=p.source.uri,
            uri=work.entry.relpath,
            content_hash=content_hash,
            size=work.entry.size,
            mtime_ns=work.entry.mtime_ns,
            status=status,
            attempts=0,
            error_count=(work.before.error_count if work.before else 0) + 1,
            version=work.before.version if work.before else 0,
        )
        await p.metadata.commit([state], {work.doc_id: []} if delete_chunks else {})
        dlq_id = await p.metadata.add(letter)
        self.counts["failed"] += 1
        self.progress.failed += 1
        await self.emit(
            DocumentFailed(
                run_id=p.run_id,
                doc_id=work.doc_id,
                uri=work.entry.relpath,
                stage=stage,
                error_type=letter.error_type,
                message=letter.message,
                attempts=attempts,
                dlq_id=dlq_id,
            )
        )

    async def _delete_vanished(self) -> None:
        p = self.p
        if p.only is not None:
            gone = [make_doc_id(r) for r in sorted(p.only - self.found)]
            known = await p.metadata.get_documents(gone)
            await self._delete([d for d in known.values() if d.source == p.source.uri])
            return
        while batch := await p.metadata.unseen(p.source.uri, 500):
            await self._delete(batch)

    async def _delete(self, batch: list[DocState]) -> None:
        p = self.p
        if batch:
            ids = [d.doc_id for d in batch]
            await p.metadata.finish(ids, status="deleting")
            old = await p.metadata.get_chunks(ids)
            await self.vectors_ready()
            await p.vectors.delete_stale({doc_id: set() for doc_id in ids})
            crash_point("during_delete")
            await p.metadata.forget(ids)
            for doc in batch:
                removed = len(old.get(doc.doc_id, []))
                self.counts["deleted"] += 1
                self.counts["chunks_deleted"] += removed
                await self.emit(
                    DocumentDeleted(run_id=p.run_id, doc_id=doc.doc_id, uri=doc.uri, chunks_deleted=removed)
                )

    # -- progress ----------------------------------------------------------------------------------------
    async def _tick(self) -> None:
        """Reports come early and often until there is an ETA (a terminal shows a total and a
        rate within a second or two, the listing runs far behind), then one per interval, and
        one at once when the source's count arrives."""
        early = min(0.5, self.s.progress_interval_seconds)
        await asyncio.sleep(early)
        while True:
            event = self._progress_event()
            await self.emit(event)
            self._counted.clear()
            interval = early if event.eta_seconds is None else self.s.progress_interval_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._counted.wait()

    def _progress_event(self) -> BatchProgress:
        pr = self.progress
        embedder = self.p.embedder
        return BatchProgress(
            run_id=self.p.run_id,
            completed=pr.completed,
            failed=pr.failed,
            skipped=pr.skipped,
            in_flight=max(self.in_flight, 0),
            estimated_total=pr.total,
            eta_seconds=pr.eta_seconds(),
            elapsed_seconds=round(pr.clock() - pr.started, 3),
            embed_rate_per_second=embedder.rate_limit if isinstance(embedder, RateLimited) else None,
            queue_depths={
                "scanned": self.work.qsize(),
                "prepared": self.ready.qsize(),
                "embedded": self.embedded.qsize(),
            },
            listed=pr.listed,
            chunks_embedded=self.committer.stats.embedded,
        )

    def _final(self) -> RunCompleted:
        c, st = self.counts, self.committer.stats
        return RunCompleted(
            run_id=self.p.run_id,
            documents_seen=c["seen"],
            documents_added=c["added"],
            documents_updated=c["updated"],
            documents_unchanged=c["unchanged"],
            documents_deleted=c["deleted"],
            documents_skipped=c["skipped"],
            documents_failed=c["failed"],
            chunks_embedded=st.embedded,
            chunks_deleted=c["chunks_deleted"],
            chunks_reused=st.reused,
            embed_calls=st.embed_calls,
            elapsed_seconds=round(self.progress.clock() - self.progress.started, 3),
        )


def _stop_if_not_the_documents_fault(exc: HeadwaterError) -> None:
    """An embedder that is down, or a full disk, would dead-letter every document of the run
    in turn: the run stops instead, and the same command continues when it is fixed."""
    if isinstance(exc, EmbedderUnavailable) or disk_full(exc) is not None:
        raise exc


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The root cause, so callers see a ConfigError rather than a TaskGroup's wrapper."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__struct_fields__}
