"""What a run decides from the source's listing: each listed document is skipped (unchanged, or
failed before and not changed since), prepared, or left for last as a suspect; each document
no longer listed is deleted from the index.

The listing is read in pages whose store lookups overlap the classification of the page before:
a no-change re-run is nothing but these two steps, so they are the hot loop of that case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from headwater.events import DocumentDeleted, DocumentSkipped
from headwater.models import DocState, SourceEntry, Version, make_doc_id
from headwater.observability import span
from headwater.pipeline.document_run import END, RunState, Work
from headwater.pipeline.faults import crash_point
from headwater.ports import Countable

SKIP_REASONS = {"done": "unchanged", "failed": "previously_failed"}  # by recorded status
SCAN_BATCH = 1024
PREPARE_BATCH_DOCS = 32  # documents per round trip to a worker process
PREPARE_BATCH_BYTES = 4 * 1024 * 1024
log = logging.getLogger(__name__)


def fast_skip(entry: SourceEntry, version: Version | None, *, force: bool) -> str | None:
    """Unchanged size and mtime: not even read (the no-change re-run never opens a file).
    A new chunker re-keys every chunk (``force``) but cannot mend an input that failed: an
    unchanged bad file is dead-lettered once, not once per settings change."""
    if version is None or version.size != entry.size or version.mtime_ns != entry.mtime_ns:
        return None
    if force and version.status != "failed":
        return None
    return SKIP_REASONS.get(version.status)


async def _pages(entries: list[SourceEntry]) -> AsyncIterator[list[SourceEntry]]:
    for start in range(0, len(entries), SCAN_BATCH):
        yield entries[start : start + SCAN_BATCH]


class ListingSteps(RunState):
    """The scan stage of a run, and the deletions that follow it."""

    async def _scan(self) -> None:
        if self.only is not None:
            found = await self.p.source.lookup(sorted(self.only))
            self.found = {e.relpath for e in found}
            listing: AsyncIterator[list[SourceEntry]] = _pages(found)
        else:
            listing = self.p.source.scan()
        with span("headwater.docs.scan", source=self.p.source.uri) as current:
            await self._classify_all(listing)
            if current is not None:
                current.set_attributes(
                    {"listed": self.progress.listed, "unchanged": self.counts["unchanged"]}
                )
        self.progress.listing_done = True
        # Only on success: a failed or cancelled scan takes its task group's readers down with
        # it, and an end marker put into their full queue then would wait for ever.
        for _ in range(self.s.concurrency):
            await self.work.put(END)

    def _count_ahead(self) -> asyncio.Task[None] | None:
        """The source's count, for the progress total while the listing is paced by the work."""
        source = self.p.source
        if self.only is not None or not isinstance(source, Countable):
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
        batch_works: list[Work] = []
        batch_bytes = 0
        for entry, doc_id in todo:
            work = Work(entry, doc_id, states.get(doc_id), 0)
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
        return fast_skip(entry, version, force=self.force)

    def _skipped(self, doc_id: str, uri: str, reason: str) -> DocumentSkipped:
        """Count one skip and make its event."""
        if reason == "unchanged":
            self.counts["unchanged"] += 1
        else:
            self.counts["skipped"] += 1
        self.progress.skipped += 1
        return DocumentSkipped(run_id=self.run_id, doc_id=doc_id, uri=uri, reason=reason)

    async def _delete_vanished(self) -> None:
        p = self.p
        if self.only is not None:
            gone = [make_doc_id(r) for r in sorted(self.only - self.found)]
            known = await p.metadata.get_documents(gone)
            await self._delete([d for d in known.values() if d.source == p.source.uri])
            return
        while batch := await p.metadata.unseen(p.source.uri, 500):
            await self._delete(batch)

    async def _delete(self, batch: list[DocState]) -> None:
        if batch:
            with span("headwater.docs.delete", documents=len(batch)):
                await self._delete_batch(batch)

    async def _delete_batch(self, batch: list[DocState]) -> None:
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
                    DocumentDeleted(
                        run_id=self.run_id, doc_id=doc.doc_id, uri=doc.uri, chunks_deleted=removed
                    )
                )
