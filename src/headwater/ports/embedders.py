"""Text to vectors, and what a local model or a rate-limited server adds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from headwater.models import (
    Vectors,
)
from headwater.ports.lifecycle import Lifecycle


@runtime_checkable
class Embedder(Lifecycle, Protocol):
    """Batch text → vectors. ``id`` names model and settings: it keys the embedding cache.
    ``embed`` has no side effects: it is retried freely, and batches may run concurrently."""

    id: str
    dimensions: int
    cacheable: bool
    """Worth caching: False when embedding costs less than a cache lookup (the hash embedder)."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Float32 array of shape (len(texts), dimensions); a text's vector never depends on its batch."""
        ...


@runtime_checkable
class LoadsModel(Protocol):
    """Optional for embedders that run a local model. ``warm`` loads it (seconds) so a run can
    overlap that with its first reads; ``single_threaded`` makes its encodes use one intra-op
    thread: a query is one short text, which one core encodes as fast as two, and on busy cores
    torch's threads wait for each other at every op (MiniLM: ~16 ms became ~400 ms)."""

    async def warm(self) -> None: ...

    async def single_threaded(self) -> None: ...


@runtime_checkable
class RateLimited(Protocol):
    """Optional for embedders behind a rate limit (seed 004). ``rate_limit`` is the requests per
    second allowed now (progress, metrics); ``observe_queue`` hears how full the queue after the
    embedder is (depth, capacity) and adapts the rate, returning it."""

    @property
    def rate_limit(self) -> float: ...

    def observe_queue(self, depth: int, capacity: int) -> float: ...
