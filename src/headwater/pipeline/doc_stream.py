"""Documents in stream mode: ``watch`` publishes what changed, the worker's sink indexes it.

A change event only names a path (source + relpath); the sink looks at the file as it is *now*
and runs the ordinary DocumentPipeline over just those paths (``only=``). So events can be
stale, duplicated or reordered and the index still converges to what a batch run over the folder
builds: that is what makes redelivery and replay harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from headwater import cloudevents
from headwater.cloudevents import DOC_ADDED, DOC_DELETED, DOC_UPDATED, DocChange
from headwater.errors import InputError
from headwater.events import BatchProgress, ChangesPublished, Event
from headwater.models import DocState, SourceEntry, make_doc_id, sha256_hex
from headwater.pipeline.stream import Delivery
from headwater.ports import BusPublisher, MetadataStore, Source

DOCS_TOPIC = "docs"
_encoder_source = "headwater.watch"


RunPaths = Callable[[str, set[str]], AsyncGenerator[Event, None]]
"""(source URL, relpaths) → the events of a document run over just those paths (``only=``)."""


class DocumentSink:
    """Indexes the paths a batch of change events names, one run per source. It is handed the
    way to run a pipeline (the composition root's, with the worker's long-lived embedder) and
    which source URIs it serves (None: any)."""

    def __init__(self, run_paths: RunPaths, *, allowed: set[str] | None = None) -> None:
        self.run_paths = run_paths
        self.allowed = allowed

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def idle(self, *, final: bool) -> list[Event]:
        return []

    async def handle(self, batch: list[Delivery]) -> list[Event]:
        by_source: dict[str, set[str]] = {}
        for delivery in batch:
            assert delivery.event is not None
            try:
                change = cloudevents.decode_change(delivery.event)
            except InputError as exc:
                delivery.error = exc
                continue
            if self.allowed is not None and change.source not in self.allowed:
                msg = f"source {change.source!r} is not one this worker serves (--source)"
                delivery.error = InputError(msg, field="data.source")
                continue
            by_source.setdefault(change.source, set()).add(change.relpath)
        events: list[Event] = []
        for source, relpaths in sorted(by_source.items()):
            async with contextlib.aclosing(self.run_paths(source, relpaths)) as stream:
                events += [e async for e in stream if not isinstance(e, BatchProgress)]
        return events


def change_event(kind: str, source: str, entry: SourceEntry | DocState) -> bytes:
    """Deterministic id: the same change seen twice (two polls, two watchers) has the same id."""
    relpath = entry.relpath if isinstance(entry, SourceEntry) else entry.uri
    change = DocChange(source=source, relpath=relpath, size=entry.size, mtime_ns=entry.mtime_ns)
    data = cloudevents.encode_data(change)
    event_id = sha256_hex(f"{kind}\x00{source}\x00{relpath}\x00{entry.size}\x00{entry.mtime_ns}")[:32]
    return cloudevents.make_event(id=event_id, source=_encoder_source, type=kind, data=data, subject=relpath)


class Watcher:
    """Polls a source and publishes add/update/delete events for what the metadata store (the
    worker's view of the index) does not have yet. It remembers what it published, so a change
    the worker has not processed yet is not published again on every poll."""

    def __init__(
        self,
        source: Source,
        metadata: Callable[[], MetadataStore],
        bus: BusPublisher,
        *,
        topic: str = DOCS_TOPIC,
        max_file_bytes: int,
    ) -> None:
        self.source = source
        self.metadata = metadata  # a fresh store per poll: opened, compared against, closed
        self.bus = bus
        self.topic = topic
        self.max_file_bytes = max_file_bytes
        self.published: dict[str, tuple[str, int, int]] = {}

    async def poll(self) -> ChangesPublished:
        metadata = self.metadata()
        await metadata.open()
        counts = dict.fromkeys(("added", "updated", "deleted", "unchanged"), 0)
        try:
            async for page in self.source.scan():
                for start in range(0, len(page), 256):
                    await self._compare(metadata, page[start : start + 256], counts)
            while gone := await metadata.unseen(self.source.uri, 256):
                await metadata.note_seen([d.uri for d in gone])
                await self._publish([("deleted", d) for d in gone], counts)
        finally:
            await metadata.close()
        return ChangesPublished(source=self.source.uri, **counts, run_id=f"watch-{int(time.time())}")

    async def _compare(
        self, metadata: MetadataStore, batch: list[SourceEntry], counts: dict[str, int]
    ) -> None:
        if not batch:
            return
        ids = [make_doc_id(e.relpath) for e in batch]
        await metadata.note_seen([e.relpath for e in batch])
        states = await metadata.get_documents(ids)
        changes: list[tuple[str, SourceEntry]] = []
        for entry, doc_id in zip(batch, ids, strict=True):
            state = states.get(doc_id)
            if entry.problem is not None or await self._unchanged(entry, state):
                counts["unchanged"] += 1
            else:
                changes.append(("added" if state is None else "updated", entry))
        await self._publish(changes, counts)

    async def _unchanged(self, entry: SourceEntry, state: DocState | None) -> bool:
        """Same size and mtime as indexed; or touched but with the same bytes (content hash)."""
        if state is None or state.status not in ("done", "failed"):
            return False
        if (state.size, state.mtime_ns) == (entry.size, entry.mtime_ns):
            return True
        try:
            data = await self.source.read(entry, self.max_file_bytes)
        except InputError:
            return False  # let the worker dead-letter it with the reason
        return sha256_hex(data) == state.content_hash

    async def _publish(
        self, changes: Sequence[tuple[str, SourceEntry | DocState]], counts: dict[str, int]
    ) -> None:
        kinds = {"added": DOC_ADDED, "updated": DOC_UPDATED, "deleted": DOC_DELETED}
        bodies = []
        for kind, entry in changes:
            doc_id = make_doc_id(entry.relpath if isinstance(entry, SourceEntry) else entry.uri)
            version = (kind, entry.size, entry.mtime_ns)
            if self.published.get(doc_id) == version:
                counts["unchanged"] += 1
                continue
            self.published[doc_id] = version
            counts[kind] += 1
            bodies.append(change_event(kinds[kind], self.source.uri, entry))
        if bodies:
            await self.bus.publish(self.topic, bodies)

    async def run(
        self, interval_seconds: float, stop: asyncio.Event, *, once: bool = False
    ) -> AsyncIterator[ChangesPublished]:
        await self.bus.open()
        try:
            while True:
                yield await self.poll()
                if once:
                    return
                try:
                    async with asyncio.timeout(interval_seconds):
                        await stop.wait()
                except TimeoutError:
                    continue
                return
        finally:
            await self.bus.close()
