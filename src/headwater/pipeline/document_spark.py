"""A document backfill on Spark: the listing partitioned, each partition indexed by a Spark task.

A task runs the document pipeline itself (``DocumentPipeline`` with ``only=`` its paths: read,
extract, chunk, embed, upsert, commit — the same functions and the same per-document commit
protocol as a local run) against the shared stores, in a scratch home of its own. The metadata
store serializes the tasks as it serializes several stream workers (claims, attempts), so tasks
need a metadata store and a vector store that every executor reaches: PostgreSQL, and pgvector
or a Chroma server. Then the driver runs one ordinary local pass over the whole source: it finds
every document the tasks indexed unchanged, deletes the vanished ones, and indexes whatever a
failed task left, so the index ends as a local run's (same fingerprint), a re-run is incremental,
and a killed job run again converges by the same protocol as a killed local run.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import pyarrow as pa

from headwater.adapters.spark import cancel_all_jobs, default_parallelism, open_session, run_spark
from headwater.config import Settings
from headwater.errors import ConfigError
from headwater.events import DocumentEvent, RunCompleted, RunStarted
from headwater.pipeline.document_listing import fast_skip
from headwater.pipeline.documents import SOURCE_SPANS
from headwater.ports import MetadataStore
from headwater.stages.chunk import chunker_key

if TYPE_CHECKING:
    from headwater.pipeline.documents import DocumentPipeline

_COUNTS = tuple(
    name for name in RunCompleted.__struct_fields__ if name.startswith(("documents_", "chunks_", "embed_"))
)
_TASK_RESULT = pa.schema([("counts", pa.string())])


def check_shared_stores(settings: Settings) -> None:
    """Spark tasks write from other processes, perhaps other machines: the stores must be servers."""
    metadata = urlsplit(settings.metadata_store_url).scheme
    vectors = urlsplit(settings.vector_store_url)
    if metadata not in ("postgresql", "postgres"):
        msg = (
            f"a document backfill on Spark needs a metadata store every executor reaches, not {metadata}:// "
            "(the home's SQLite): set --metadata-store postgresql://HOST/DB (or run with --compute local)"
        )
        raise ConfigError(msg)
    if vectors.scheme == "pgvector" or (vectors.scheme == "chroma" and vectors.hostname):
        return
    msg = (
        f"a document backfill on Spark needs a vector store every executor writes to, not "
        f"{vectors.scheme}:// in one home: set --vector-store pgvector://HOST/DB or chroma://HOST:PORT "
        "(or run with --compute local)"
    )
    raise ConfigError(msg)


def index_task(
    settings: Settings, source_url: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """One partition of the listing, indexed by a local pipeline in a scratch home of its own."""
    from headwater.compose import build_document_pipeline

    paths = [path for batch in batches for path in batch.column(0).to_pylist()]
    if not paths:
        return
    with tempfile.TemporaryDirectory(prefix="headwater-spark-") as scratch:
        # One extraction process: Spark runs a task per core already.
        local = settings.model_copy(update={"home": Path(scratch), "compute": "local", "workers": 1})
        pipeline = build_document_pipeline(local, source_url, only=paths)
        final = asyncio.run(pipeline.run_async())
    counts = {name: getattr(final, name) for name in _COUNTS}
    yield pa.record_batch([pa.array([msgspec.json.encode(counts).decode()])], schema=_TASK_RESULT)


class SparkDocumentPipeline:
    """What ``DocumentPipeline`` offers a caller (``stream_events``, ``run_async``), on Spark."""

    def __init__(self, settings: Settings, source_url: str, closing: DocumentPipeline, master: str) -> None:
        check_shared_stores(settings)
        self.settings = settings
        self.source_url = source_url
        self.closing = closing  # the driver's local pass, over the same source and stores
        self.master = master

    def stream_events(self) -> AsyncGenerator[DocumentEvent, None]:
        return self._events()

    async def _events(self) -> AsyncGenerator[DocumentEvent, None]:
        started = time.monotonic()
        yield RunStarted(run_id=self.closing.run_id, kind="documents", source=self.closing.source.uri)
        paths = await self._listing()
        try:
            spark = await asyncio.to_thread(self._index, paths)
        except BaseException:  # a stop request or an error: nothing goes on running in Spark
            cancel_all_jobs()
            raise
        async with contextlib.aclosing(self.closing.stream_events()) as events:
            async for event in events:
                if isinstance(event, RunCompleted):
                    yield _merged(event, spark, time.monotonic() - started)
                elif not isinstance(event, RunStarted):
                    yield event

    async def _listing(self) -> list[str]:
        """The paths the tasks have work for: the source's listing (include and exclude applied)
        less what a local run skips unread (same size and mtime, already done). A no-change
        re-run so starts no JVM at all."""
        from headwater.compose import make_metadata_store

        metadata = make_metadata_store(self.settings)
        await metadata.open()
        try:
            force = await self._forced(metadata)
            source, paths = self.closing.source, list[str]()
            async for page in source.scan():
                versions = {} if force else await metadata.versions(source.uri, [e.relpath for e in page])
                paths.extend(
                    e.relpath
                    for e in page
                    if e.problem is None and fast_skip(e, versions.get(e.relpath), force=force) is None
                )
            return paths
        finally:
            await metadata.close()

    async def _forced(self, metadata: MetadataStore) -> bool:
        """Will the run re-key every chunk (a new chunker, or spans not yet recorded)? Then every
        document is work (``DocumentPipeline._check_settings`` decides the same from the same keys)."""
        s = self.settings
        was = await metadata.get_setting("chunker_key")
        if was is None:
            return False
        spans = await metadata.get_setting(f"source_spans:{self.closing.source.uri}")
        return (
            was != chunker_key(s.chunk_size_chars, s.chunk_overlap_chars, s.pii_scrub)
            or spans != SOURCE_SPANS
        )

    def _index(self, paths: list[str]) -> dict[str, int]:
        """The tasks: the listing cut into contiguous partitions, each indexed by ``index_task``."""
        totals = dict.fromkeys(_COUNTS, 0)
        if not paths:
            return totals
        session = open_session(self.master)
        partitions = max(1, min(len(paths), 2 * default_parallelism(session)))
        rows = session.sparkContext.parallelize([(p,) for p in paths], partitions).toDF("path string")
        task = _bound(self.settings, self.source_url)
        results = run_spark(lambda: rows.mapInArrow(task, "counts string").collect())
        for row in results:
            for name, value in msgspec.json.decode(row["counts"]).items():
                totals[name] += value
        return totals

    async def run_async(self) -> RunCompleted:
        final: RunCompleted | None = None
        async with contextlib.aclosing(self.stream_events()) as events:
            async for event in events:
                if isinstance(event, RunCompleted):
                    final = event
        assert final is not None
        return final


def _bound(settings: Settings, source_url: str) -> Any:
    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return index_task(settings, source_url, batches)

    return task


def _merged(closing: RunCompleted, spark: dict[str, int], elapsed: float) -> RunCompleted:
    """The command's summary. The closing pass saw every document: the ones the tasks wrote as
    unchanged, a task's failure again (so it counts what is still failed at the end, once)."""
    written = spark["documents_added"] + spark["documents_updated"]
    summed = [
        *("documents_added", "documents_updated", "documents_deleted"),
        *("chunks_embedded", "chunks_deleted", "chunks_reused", "embed_calls"),
    ]
    return RunCompleted(
        run_id=closing.run_id,
        documents_seen=closing.documents_seen,
        documents_unchanged=max(0, closing.documents_unchanged - written),
        documents_skipped=closing.documents_skipped,
        documents_failed=closing.documents_failed,
        elapsed_seconds=round(elapsed, 3),
        **{name: getattr(closing, name) + spark[name] for name in summed},
    )
