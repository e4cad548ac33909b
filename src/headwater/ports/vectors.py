"""The vector index: its write and read sides, and what some stores add."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from headwater.models import (
    Chunk,
    Vectors,
)


@runtime_checkable
class VectorWriter(Protocol):
    """Writes to the chunk vectors, keyed by ``chunk_id``.

    Idempotent: ``upsert`` per chunk id, ``update_positions`` per row and ``delete_stale`` per
    document, so the engine replays a group after a crash instead of trusting bookkeeping.
    Ordering: a group's vectors are upserted before its state is committed, and its stale rows
    are deleted after (a crash between the two is repaired by re-running the group). Durable
    when the call returns.
    """

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        """``fresh`` promises none of these ids exist yet (a pure append is cheaper than a merge)."""
        ...

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        """Rewrite uri/offset/length of existing rows (text moved within its document), not vectors."""
        ...

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        """For each doc_id, delete its rows whose chunk_id is not in the set (empty set: all)."""
        ...


@runtime_checkable
class VectorReader(Protocol):
    """Reads of the chunk vectors: no side effects, any order, safe to repeat. They see every
    write that returned before them (a query after a run sees the whole run)."""

    async def count(self) -> int: ...

    async def search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks with their distances, nearest first."""
        ...

    def scan(self) -> AsyncIterator[Chunk]:
        """Every stored chunk (no vectors), for fingerprints, verify and export."""
        ...


@runtime_checkable
class VectorStore(VectorWriter, VectorReader, Protocol):
    """Chunk vectors keyed by ``chunk_id``: the write and read sides of one index, opened once
    the embedder's ``dimensions`` are known (``open`` is idempotent; a second process may open
    the same index for reading) and closed after the last write returned."""

    async def open(self, dimensions: int) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Compactable(Protocol):
    """Optional for vector stores whose maintenance reads the whole index (``headwater
    optimize``): compaction, index folding, old versions dropped. Idempotent."""

    async def optimize(self) -> None: ...


@runtime_checkable
class Snapshots(Protocol):
    """Optional for vector stores a server can mirror in memory: the latest version number and,
    unless it is still ``since``, every row with its vector (an Arrow table)."""

    async def snapshot(self, since: int | None = None) -> tuple[int, Any]: ...


@runtime_checkable
class SearchesByPrefix(Protocol):
    """Optional for vector stores that filter by ``uri`` prefix before ranking (a prefilter):
    the ``k`` nearest chunks whose uri starts with ``uri_prefix``, k whenever k match. A store
    without it is over-fetched and filtered after ranking (``ops.search``)."""

    async def search_prefix(self, vector: Vectors, k: int, uri_prefix: str) -> list[tuple[Chunk, float]]: ...
