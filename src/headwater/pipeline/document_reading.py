"""A run's read and prepare step: read and hash each listed document, skip those whose bytes
did not change, claim the rest, and extract, normalize and chunk them in the worker processes.

Claims come just before the work, so an input that kills a worker counts an attempt and
reaches the DLQ after ``max_attempts`` instead of looping; a batch that hangs or crashes its
worker is split to find the culprit alone.
"""

from __future__ import annotations

import msgspec

from headwater.errors import InputError
from headwater.events import DocumentSkipped, DocumentStarted
from headwater.models import DocState, sha256_hex
from headwater.observability import span
from headwater.pipeline.commit import ReadyDocument
from headwater.pipeline.document_failures import FailureSteps
from headwater.pipeline.document_listing import SKIP_REASONS, ListingSteps
from headwater.pipeline.document_run import Work
from headwater.pipeline.faults import crash_point
from headwater.stages.prepare import PrepareFailure, prepare_documents


class ReadingSteps(ListingSteps, FailureSteps):
    """Listed work → prepared documents, ready to embed."""

    async def _start_pool(self) -> None:
        """Fork the extraction workers before anything can start lancedb's threads (see
        ``CpuPool.start``): a read error of a known document opens the vector store to drop
        its chunks, so this comes before the first read."""
        if not self._pool_started:
            async with self._starting:
                if not self._pool_started:
                    await self.pool.start()
                    self._pool_started = True

    async def _prepare_batch(self, batch: list[Work]) -> list[ReadyDocument]:
        await self._start_pool()
        self.in_flight += len(batch)
        if self.s.document_started_events:
            run_id = self.run_id
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

    async def _read_changed(self, batch: list[Work]) -> list[tuple[Work, bytes, str]]:
        """Read and hash; a document whose bytes did not change is skipped (only its mtime moved:
        a checkout, a restore, a ``touch``). Its new size and mtime are recorded for the whole
        batch in one transaction, so the next run skips it unread."""
        loaded = []
        touched: list[DocState] = []
        skips: list[DocumentSkipped] = []
        with span("headwater.docs.read", documents=len(batch)) as current:
            contents = await self.p.source.read_many([w.entry for w in batch], self.s.max_file_bytes)
            if current is not None:
                current.set_attribute("bytes", sum(len(c) for c in contents if isinstance(c, bytes)))
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

    async def _extract(self, todo: list[tuple[Work, bytes, str]]) -> list[ReadyDocument]:
        if not todo:
            return []
        for work, _, _ in todo:
            crash_point("extract", work.entry.relpath)
        items = [(w.doc_id, w.entry.relpath, data) for w, data, _ in todo]
        try:
            # extract, normalize and chunk: one call to a worker process per batch
            with span(
                "headwater.docs.extract", documents=len(items), stages="extract,normalize,chunk"
            ) as current:
                results = await self.pool.run(
                    todo[0][0].entry.relpath, prepare_documents, items, self.options
                )
                if current is not None:
                    current.set_attribute(
                        "chunks", sum(len(r.chunks) for r in results if not isinstance(r, PrepareFailure))
                    )
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
