"""Queries: the ``k`` chunks nearest to a text, for the CLI (one query) and the server (a
``Searcher`` kept open, optionally with the index resident in memory).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from headwater.compose import make_embedder, make_vector_store
from headwater.config import Settings
from headwater.models import Chunk, Vectors
from headwater.ports import Embedder, LoadsModel, SearchesByPrefix, Snapshots, VectorStore

_OVERFETCH = 8  # a store that cannot filter by uri prefix is asked for k x this, then more
RESIDENT_MAX_ROWS = 200_000  # ~300 MB of 384-dimensional vectors: a server keeps no more in memory
RESIDENT_REFRESH_SECONDS = 1.0  # see _Resident


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
        return [{**chunk_dict(chunk), "score": round(score, 6)} for chunk, score in hits]

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
    """A store that ``SearchesByPrefix`` filters before ranking (LanceDB: a prefilter, so k
    hits whenever k chunks match). Any other store is over-fetched and filtered
    here, doubling the fetch until k hits match or the store has no more: exact, but a rare
    prefix costs up to a search of the whole store."""
    if not uri_prefix:
        return await vectors.search(vector, k)
    if isinstance(vectors, SearchesByPrefix):
        return await vectors.search_prefix(vector, k, uri_prefix)
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


def chunk_dict(chunk: Chunk) -> dict[str, Any]:
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
