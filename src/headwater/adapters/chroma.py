"""Chroma: the chunk vectors in a Chroma collection, on a server (``chroma://HOST:PORT/COLLECTION``,
a ``chroma run`` or a deployment) or embedded on disk (``chroma:///PATH``, collection ``chunks``).

One record per chunk: id = ``chunk_id``, the embedding headwater computed (the collection has no
embedding function, so Chroma never downloads a model), the text as the document, and the
chunk's fields as metadata. Chroma has no null metadata values, so the nullable span fields are
stored as -1 and read back as None. The collection is created with ``hnsw:space = cosine``, and
scores are ``1 - distance``: cosine similarity, higher is better, as on every store.

Which index answers a query: Chroma's HNSW, its only index, built as rows arrive (``ef_search``
100: on small collections the hits are the exact ones). Chroma cannot filter metadata by prefix,
so a source-filtered query over-fetches and filters after ranking (``ops.search``).

Why batches are cut at ``get_max_batch_size()``: a larger upsert is refused by Chroma.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError, PermanentError, StoreUnavailable
from headwater.models import Chunk, Vectors
from headwater.redaction import redact_url

COLLECTION = "chunks"
_NULLABLE = ("source_start", "source_end", "page", "page_end")
_FIELDS = ("doc_id", "uri", "offset", "length", "chunk_hash", *_NULLABLE)
_SCAN_ROWS = 2000


def _where(url: str) -> tuple[str | None, int | None, str, str]:
    """(host, port, path, collection): a server when ``host`` is set, else a folder."""
    parts = urlsplit(url)
    if parts.scheme == "chroma" and parts.netloc:
        collection = parts.path.strip("/") or COLLECTION
        if parts.port is None or "/" in collection:
            msg = f"vector store URL {redact_url(url)!r} must look like chroma://HOST:PORT/COLLECTION"
            raise ConfigError(msg)
        return parts.hostname, parts.port, "", collection
    if parts.scheme == "chroma" and parts.path.startswith("/"):
        return None, None, parts.path, COLLECTION
    msg = f"vector store URL {redact_url(url)!r} must look like chroma:///absolute/path or chroma://HOST:PORT/COLLECTION"
    raise ConfigError(msg)


class ChromaVectorStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._host, self._port, self._path, self._name = _where(url)
        self._thread = OwnThread("chroma")
        self._collection: Any = None

    async def open(self, dimensions: int) -> None:
        await self._thread.call(self._open, dimensions)

    def _open(self, dimensions: int) -> None:
        if self._collection is not None:
            return
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings = ChromaSettings(anonymized_telemetry=False)
        try:
            if self._host is not None:
                client = chromadb.HttpClient(host=self._host, port=self._port or 8000, settings=settings)
            else:
                client = chromadb.PersistentClient(path=self._path, settings=settings)
            collection = client.get_or_create_collection(
                self._name,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"headwater_dimensions": dimensions},
            )
        except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
            msg = f"cannot open the vector store {redact_url(self.url)}: {exc}"
            raise StoreUnavailable(msg) from exc
        except Exception as exc:  # a bad collection name, a server that refused
            msg = f"cannot open the vector store {redact_url(self.url)}: {exc}"
            raise ConfigError(msg) from exc
        stored = (collection.metadata or {}).get("headwater_dimensions")
        if stored != dimensions:
            msg = (
                f"vector store {redact_url(self.url)} holds {stored}-dimensional vectors but the "
                f"embedder makes {dimensions}; use another --home or --vector-store for this embedder"
            )
            raise ConfigError(msg)
        self._collection, self._batch = collection, client.get_max_batch_size()

    async def close(self) -> None:
        self._collection = None
        self._thread.shutdown()

    # -- writes ------------------------------------------------------------------------------------

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        if chunks:
            await self._thread.call(self._upsert, chunks, vectors)

    def _upsert(self, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        import numpy as np

        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(chunks), self._batch):
            part = chunks[start : start + self._batch]
            with _errors(self.url):
                self._collection.upsert(
                    ids=[c.chunk_id for c in part],
                    embeddings=matrix[start : start + len(part)],
                    metadatas=[_metadata(c) for c in part],
                    documents=[c.text for c in part],
                )

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        """A metadata update merges keys, so the vectors stay; ids Chroma does not have are ignored."""
        if chunks:
            await self._thread.call(self._update_positions, chunks)

    def _update_positions(self, chunks: Sequence[Chunk]) -> None:
        for start in range(0, len(chunks), self._batch):
            part = chunks[start : start + self._batch]
            with _errors(self.url):
                self._collection.update(
                    ids=[c.chunk_id for c in part], metadatas=[_metadata(c) for c in part]
                )

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        if keep:
            await self._thread.call(self._delete_stale, keep)

    def _delete_stale(self, keep: dict[str, set[str]]) -> None:
        docs = sorted(keep)
        for start in range(0, len(docs), 500):
            part = docs[start : start + 500]
            with _errors(self.url):
                found = self._collection.get(where={"doc_id": {"$in": part}}, include=["metadatas"])
            stale = [
                chunk_id
                for chunk_id, meta in zip(found["ids"], found["metadatas"], strict=True)
                if chunk_id not in keep[meta["doc_id"]]
            ]
            for cut in range(0, len(stale), self._batch):
                with _errors(self.url):
                    self._collection.delete(ids=stale[cut : cut + self._batch])

    # -- reads -------------------------------------------------------------------------------------

    async def count(self) -> int:
        return int(await self._thread.call(self._count))

    def _count(self) -> int:
        with _errors(self.url):
            return int(self._collection.count())

    async def search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        return await self._thread.call(self._search, vector, k)

    def _search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        import numpy as np

        total = self._count()
        if total == 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with _errors(self.url):
            found = self._collection.query(
                query_embeddings=query,
                n_results=min(k, total),
                include=["metadatas", "documents", "distances"],
            )
        rows = zip(
            found["ids"][0], found["metadatas"][0], found["documents"][0], found["distances"][0], strict=True
        )
        return [
            (_chunk(chunk_id, meta, text), 1.0 - float(distance)) for chunk_id, meta, text, distance in rows
        ]

    async def scan(self) -> AsyncIterator[Chunk]:
        offset = 0
        while True:
            page = await self._thread.call(self._page, offset)
            for chunk_id, meta, text in zip(page["ids"], page["metadatas"], page["documents"], strict=True):
                yield _chunk(chunk_id, meta, text)
            if len(page["ids"]) < _SCAN_ROWS:
                return
            offset += _SCAN_ROWS

    def _page(self, offset: int) -> Any:
        with _errors(self.url):
            return self._collection.get(include=["metadatas", "documents"], limit=_SCAN_ROWS, offset=offset)


def _metadata(chunk: Chunk) -> dict[str, Any]:
    meta: dict[str, Any] = {name: getattr(chunk, name) for name in _FIELDS}
    for name in _NULLABLE:
        if meta[name] is None:
            meta[name] = -1
    return meta


def _chunk(chunk_id: str, meta: dict[str, Any], text: str) -> Chunk:
    fields: dict[str, Any] = {name: meta.get(name) for name in _FIELDS}
    for name in _NULLABLE:
        if fields[name] == -1:
            fields[name] = None
    return Chunk(chunk_id=chunk_id, text=text, **fields)


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Chroma's errors as the engine's: a connection that failed is retryable (the run stops once
    the retries are spent), a refusal is permanent (the group goes to the DLQ)."""
    import httpx
    from chromadb.errors import ChromaError

    try:
        yield
    except (httpx.TransportError, ConnectionError) as exc:
        msg = f"vector store {redact_url(url)} unavailable: {exc}"
        raise StoreUnavailable(msg) from exc
    except ChromaError as exc:
        msg = f"vector store {redact_url(url)} refused: {exc}"
        raise PermanentError(msg) from exc
