"""Operations on a built index: fingerprint and status, verify and repair, query, export, and
replay of dead-lettered documents. They read the vector store itself, not only our bookkeeping,
because bookkeeping is exactly what a crash or an external delete makes wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec

from headwater.adapters.lancedb import TABLE as LANCE_TABLE
from headwater.bootstrap import build_document_pipeline, make_embedder, make_metadata_store, make_vector_store
from headwater.config import Settings
from headwater.events import RunCompleted
from headwater.homelock import home_lock
from headwater.models import Chunk, DocState, Vectors
from headwater.ports import Compactable, Embedder, LoadsModel, Snapshots, VectorStore

_NO_DIMENSIONS = 0
_OVERFETCH = 8  # a store that cannot filter by uri prefix is asked for k x this, then more
RESIDENT_MAX_ROWS = 200_000  # ~300 MB of 384-dimensional vectors: a server keeps no more in memory
RESIDENT_REFRESH_SECONDS = 1.0  # see _Resident


async def _open_index(settings: Settings) -> tuple[Any, Any, Any]:
    metadata, vectors, embedder = (
        make_metadata_store(settings),
        make_vector_store(settings),
        make_embedder(settings),
    )
    await metadata.open()
    await embedder.open()
    await vectors.open(embedder.dimensions)
    return metadata, vectors, embedder


async def _close_index(metadata: Any, vectors: Any, embedder: Any) -> None:
    await vectors.close()
    await embedder.close()
    await metadata.close()


async def status(settings: Settings) -> dict[str, Any]:
    """Counts plus ``fingerprint``: sha256 of the sorted ``doc_id\\tchunk_id\\tchunk_hash\\n`` lines
    read from the vector store; equal fingerprints mean equal indexes."""
    metadata, vectors, embedder = await _open_index(settings)
    try:
        counts = await metadata.counts()
        lines = sorted([f"{c.doc_id}\t{c.chunk_id}\t{c.chunk_hash}\n" async for c in vectors.scan()])
        digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
        return {
            **counts,
            "vectors": len(lines),
            "fingerprint": digest,
            "embedder": embedder.id,
            "home": str(settings.home),
        }
    finally:
        await _close_index(metadata, vectors, embedder)


async def optimize(settings: Settings) -> None:
    """Compact the vector store, fold new rows into its indexes and drop old versions: the
    maintenance an ingest skips on large tables (it reads the whole table), for a quiet hour."""
    async with home_lock(settings.home, wait=settings.wait_for_home):
        metadata, vectors, embedder = await _open_index(settings)
        try:
            if isinstance(vectors, Compactable):
                await vectors.optimize()
        finally:
            await _close_index(metadata, vectors, embedder)


@dataclass
class VerifyReport:
    lost: list[str] = field(default_factory=list)  # in metadata, missing from the vector store
    orphans: list[str] = field(default_factory=list)  # in the vector store, unknown to metadata
    duplicates: list[str] = field(default_factory=list)  # stored more than once
    drift: list[str] = field(default_factory=list)  # same id, different doc or hash
    incomplete: list[str] = field(default_factory=list)  # documents left mid-update by a crash
    affected_docs: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.orphans or self.duplicates or self.drift or self.incomplete)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lost": self.lost,
            "orphans": self.orphans,
            "duplicates": self.duplicates,
            "drift": self.drift,
            "incomplete": self.incomplete,
        }


async def verify(settings: Settings, *, repair: bool = False) -> tuple[VerifyReport, VerifyReport | None]:
    """Compare metadata with the vector store; with ``repair``, fix it and verify again.

    It holds the writer lock while it compares (a run in progress is not a disagreement: it
    waits for it) and lets go of it for the repairing runs, which take it themselves."""
    async with home_lock(settings.home, wait=settings.wait_for_home):
        metadata, vectors, embedder = await _open_index(settings)
        try:
            report = await _compare(metadata, vectors)
            if not repair or report.ok:
                return report, None
            sources = await _repair_marks(metadata, vectors, report)
        finally:
            await _close_index(metadata, vectors, embedder)
    for source, relpaths in sources.items():
        await build_document_pipeline(settings, source, only=relpaths).run_async()
    async with home_lock(settings.home, wait=settings.wait_for_home):
        metadata, vectors, embedder = await _open_index(settings)
        try:
            return report, await _compare(metadata, vectors)
        finally:
            await _close_index(metadata, vectors, embedder)


async def _compare(metadata: Any, vectors: Any) -> VerifyReport:
    expected = {k.chunk_id: (k.doc_id, k.chunk_hash) async for k in metadata.chunk_keys()}
    stored: Counter[str] = Counter()
    report = VerifyReport()
    async for chunk in vectors.scan():
        stored[chunk.chunk_id] += 1
        want = expected.get(chunk.chunk_id)
        if want is None:
            report.orphans.append(chunk.chunk_id)
            report.affected_docs.add(chunk.doc_id)
        elif want != (chunk.doc_id, chunk.chunk_hash):
            report.drift.append(chunk.chunk_id)
            report.affected_docs.update({chunk.doc_id, want[0]})
    for chunk_id, n in stored.items():
        if n > 1:
            report.duplicates.append(chunk_id)
            report.affected_docs.add(expected.get(chunk_id, ("", ""))[0])
    for chunk_id, (doc_id, _) in expected.items():
        if chunk_id not in stored:
            report.lost.append(chunk_id)
            report.affected_docs.add(doc_id)
    counts = await metadata.counts()
    for status in ("pending", "cleanup", "deleting"):
        if counts.get(f"documents_{status}"):
            report.incomplete.append(f"{counts[f'documents_{status}']} documents {status}")
    report.affected_docs.discard("")
    return report


async def _repair_marks(metadata: Any, vectors: Any, report: VerifyReport) -> dict[str, set[str]]:
    """Drop the affected documents' vectors and mark them pending; returns what to re-ingest."""
    states = await metadata.get_documents(sorted(report.affected_docs))
    unknown = report.affected_docs - set(states)
    await vectors.delete_stale({doc_id: set() for doc_id in report.affected_docs})
    incomplete = [d async for d in _incomplete_docs(metadata)]
    redo = list(states.values()) + incomplete
    # Their chunk keys go too, so the re-run writes every chunk again instead of trusting them.
    await metadata.commit(
        [DocState(**{**msgspec.structs.asdict(d), "status": "pending"}) for d in redo],
        {d.doc_id: [] for d in redo},
    )
    sources: dict[str, set[str]] = {}
    for doc in redo:
        sources.setdefault(doc.source, set()).add(doc.uri)
    del unknown  # vectors of documents metadata never knew are simply removed
    return sources


async def _incomplete_docs(metadata: Any) -> AsyncIterator[Any]:
    for state in await metadata.documents_with_status(["pending", "cleanup", "deleting"]):
        yield state


async def query(
    settings: Settings, text: str, k: int, *, uri_prefix: str | None = None
) -> list[dict[str, Any]]:
    """One query, opening and closing the index around it (the CLI); a server keeps a ``Searcher``."""
    searcher = Searcher(settings)
    try:
        return await searcher.search(text, k, uri_prefix=uri_prefix)
    finally:
        await searcher.close()


class Searcher:
    """An index opened once for many queries (``POST /v1/query``): the embedder (its model
    loaded) and the vector store stay open until ``close()``, so a query is one embed call and
    one vector search. Concurrent queries are safe: each adapter runs its calls one at a time in
    its own thread, off the event loop. Opening is lazy (the first ``search`` or ``open``) and
    happens once, however many queries race for it; ``close()`` lets a later query reopen."""

    def __init__(self, settings: Settings, *, resident: bool = False) -> None:
        self.settings = settings
        self._embedder: Embedder | None = None
        self._vectors: VectorStore | None = None
        self._lock = asyncio.Lock()
        self._resident = _Resident() if resident else None

    @property
    def embedder_id(self) -> str | None:
        return self._embedder.id if self._embedder is not None else None

    async def open(self) -> tuple[Embedder, VectorStore]:
        async with self._lock:
            if self._embedder is None or self._vectors is None:
                embedder = make_embedder(self.settings)
                await embedder.open()
                try:
                    if isinstance(embedder, LoadsModel):  # a local model loads now, not mid-query
                        await embedder.warm()
                        await embedder.single_threaded()
                    vectors = make_vector_store(self.settings)
                    await vectors.open(embedder.dimensions)
                except BaseException:
                    await embedder.close()
                    raise
                self._embedder, self._vectors = embedder, vectors
            return self._embedder, self._vectors

    async def warm(self) -> None:
        """Open the index and load the in-memory copy now (a server's start-up), not on a query."""
        _, vectors = await self.open()
        if self._resident is not None:
            await self._resident.refresh(vectors)

    async def search(self, text: str, k: int, *, uri_prefix: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` chunks nearest to ``text`` (cosine, best first), only those whose ``uri``
        starts with ``uri_prefix`` when one is given."""
        embedder, vectors = await self.open()
        vector = (await embedder.embed([text]))[0]
        found = (
            None if self._resident is None else await self._resident.search(vectors, vector, k, uri_prefix)
        )
        hits = found if found is not None else await _search(vectors, vector, k, uri_prefix)
        return [{**_chunk_dict(chunk), "score": round(score, 6)} for chunk, score in hits]

    async def close(self) -> None:
        async with self._lock:
            embedder, vectors, self._embedder, self._vectors = self._embedder, self._vectors, None, None
            try:
                if vectors is not None:
                    await vectors.close()
            finally:
                if embedder is not None:
                    await embedder.close()


async def _search(
    vectors: VectorStore, vector: Vectors, k: int, uri_prefix: str | None
) -> list[tuple[Chunk, float]]:
    """A store whose ``search`` takes ``uri_prefix`` filters before ranking (LanceDB: a
    prefilter, so k hits whenever k chunks match). Any other store is over-fetched and filtered
    here, doubling the fetch until k hits match or the store has no more: exact, but a rare
    prefix costs up to a search of the whole store."""
    if not uri_prefix:
        return await vectors.search(vector, k)
    search: Any = vectors.search
    if "uri_prefix" in inspect.signature(search).parameters:
        return cast(list[tuple[Chunk, float]], await search(vector, k, uri_prefix=uri_prefix))
    total, fetch = await vectors.count(), max(k * _OVERFETCH, k)
    while True:
        hits = await vectors.search(vector, min(fetch, total))
        kept = [(chunk, score) for chunk, score in hits if chunk.uri.startswith(uri_prefix)]
        if len(kept) >= k or fetch >= total:
            return kept[:k]
        fetch *= 2


class _Resident:
    """The index held in memory by a long-lived ``Searcher`` (with ``resident=True``): LanceDB's
    flat search re-reads every vector of the table for each query (~25 ms at 20k chunks on 2
    cores); a matrix product over vectors already in memory takes ~2 ms. The copy follows the
    store's versions, reloaded at most once per ``RESIDENT_REFRESH_SECONDS`` (a query may miss a
    write for that long; an ingest writes every few seconds). Over ``RESIDENT_MAX_ROWS`` rows, or
    with a store that cannot give a snapshot, queries go to the store's own search."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.matrix: Any = None  # float32, rows normalised: a dot product is the cosine
        self.rows: Any = None  # pyarrow table of the key columns, in matrix order
        self.uris: Any = None
        self.checked = -math.inf
        self.lock = asyncio.Lock()

    async def search(
        self, vectors: VectorStore, vector: Vectors, k: int, uri_prefix: str | None
    ) -> list[tuple[Chunk, float]] | None:
        await self.refresh(vectors)
        if self.matrix is None:
            return None
        matrix, rows, uris = self.matrix, self.rows, self.uris
        return await asyncio.to_thread(_rank, matrix, rows, uris, vector, k, uri_prefix)

    async def refresh(self, vectors: VectorStore) -> None:
        if not isinstance(vectors, Snapshots) or time.monotonic() - self.checked < RESIDENT_REFRESH_SECONDS:
            return
        async with self.lock:
            if time.monotonic() - self.checked < RESIDENT_REFRESH_SECONDS:
                return
            self.checked = time.monotonic()
            if await vectors.count() > RESIDENT_MAX_ROWS:
                self.version = self.matrix = self.rows = self.uris = None
                return
            version, table = await vectors.snapshot(self.version)
            if table is not None:
                self.matrix, self.rows, self.uris = await asyncio.to_thread(_load_resident, table)
                self.version = version


def _load_resident(table: Any) -> tuple[Any, Any, Any]:
    import numpy as np

    column = table.column("vector").combine_chunks()
    dims = column.type.list_size
    raw = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dims)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    matrix = (raw / np.where(norms == 0, 1, norms)).astype(np.float32)
    rows = table.drop_columns(["vector"])
    uris = np.asarray(rows.column("uri").to_pylist(), dtype=str)
    return matrix, rows, uris


def _rank(
    matrix: Any, rows: Any, uris: Any, vector: Any, k: int, uri_prefix: str | None
) -> list[tuple[Chunk, float]]:
    import numpy as np

    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(query))
    scores = matrix @ (query / (norm or 1.0))
    candidates = np.arange(len(scores))
    if uri_prefix:
        candidates = np.flatnonzero(np.char.startswith(uris, uri_prefix))
        scores = scores[candidates]
    top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    picked = rows.take(candidates[top]).to_pylist()
    return [(Chunk(**row), float(score)) for row, score in zip(picked, scores[top], strict=True)]


def has_index(settings: Settings) -> bool:
    """Whether the home's vector store has been created (by a first ingest), checked without
    creating it. A store that is not a local LanceDB folder is taken to exist."""
    parts = urlsplit(settings.vector_store_url)
    if parts.scheme != "lancedb":
        return True
    return (Path(parts.netloc + parts.path) / f"{LANCE_TABLE}.lance").is_dir()


async def export(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    metadata, vectors, embedder = await _open_index(settings)
    try:
        async for chunk in vectors.scan():
            yield _chunk_dict(chunk)
    finally:
        await _close_index(metadata, vectors, embedder)


def _chunk_dict(chunk: Chunk) -> dict[str, Any]:
    return {
        "doc_id": chunk.doc_id,
        "uri": chunk.uri,
        "chunk_id": chunk.chunk_id,
        "offset": chunk.offset,
        "length": chunk.length,
        "source_start": chunk.source_start,
        "source_end": chunk.source_end,
        "page": chunk.page,
        "page_end": chunk.page_end,
        "chunk_hash": chunk.chunk_hash,
        "text": chunk.text,
    }


async def replay_documents(settings: Settings, letter_ids: list[int] | None) -> list[RunCompleted]:
    """Re-run dead-lettered documents (all open letters when ``letter_ids`` is None)."""
    return [
        await build_document_pipeline(settings, src, only=refs).run_async()
        for src, refs in (await claim_replays(settings, letter_ids)).items()
    ]


async def claim_replays(settings: Settings, letter_ids: list[int] | None) -> dict[str, set[str]]:
    """Mark dead-lettered documents replayed and due again; returns their paths by source.

    Claimed first, so the re-run does not skip them as ``previously_failed``; one that fails
    again gets a new letter.
    """
    from headwater.models import make_doc_id

    metadata = make_metadata_store(settings)
    await metadata.open()
    try:
        letters = [
            lt
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "document" and (letter_ids is None or lt.id in letter_ids)
        ]
        states = {}
        for letter in letters:
            states.update(await metadata.get_documents([make_doc_id(letter.input_ref)]))
        await metadata.claim([(d.doc_id, d.source, d.uri) for d in states.values()])
        await metadata.mark_replayed([lt.id for lt in letters])
    finally:
        await metadata.close()
    by_source: dict[str, set[str]] = {}
    for letter in letters:
        by_source.setdefault(letter.source, set()).add(letter.input_ref)
    return by_source
