"""Deterministic hash embedder: shake-256 of the text → 384 int16 → unit float32 vector.

No model, no network, ~1M texts/s: for tests, offline runs and benchmarks of the pipeline itself.
Equal texts get equal vectors whatever the batch, so the embedding cache and idempotency tests
can tell exactly which text a stored vector came from. ``hash://?delay_ms=N`` waits N ms per
call, standing in for a remote embedder's latency (pause/cancel/kill tests, demos); the vectors
and the embedder id do not change with it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from headwater.errors import ConfigError
from headwater.models import Vectors


class HashEmbedder:
    def __init__(self, url: str = "hash://") -> None:
        query = parse_qs(urlsplit(url).query)
        try:
            self.dimensions = int(query.get("dim", ["384"])[0])
            self.delay_seconds = int(query.get("delay_ms", ["0"])[0]) / 1000
        except ValueError as exc:
            msg = f"embedder URL {url!r}: dim and delay_ms must be integers"
            raise ConfigError(msg) from exc
        self.id = f"hash:shake256:{self.dimensions}"
        self.cacheable = False  # recomputing is cheaper than a cache lookup
        self.calls = 0
        self.texts = 0

    async def open(self) -> None:
        return None

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        self.texts += len(texts)
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)
        return embed_hash(texts, self.dimensions)

    async def close(self) -> None:
        return None


def embed_hash(texts: Sequence[str], dimensions: int) -> Vectors:
    import numpy as np  # lazily: a run that embeds nothing never loads numpy (~0.15 s)

    if not texts:
        return np.zeros((0, dimensions), dtype=np.float32)
    raw = b"".join(hashlib.shake_256(t.encode("utf-8")).digest(2 * dimensions) for t in texts)
    ints = np.frombuffer(raw, dtype="<i2").reshape(len(texts), dimensions).astype(np.float32)
    norms = np.linalg.norm(ints, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: Vectors = ints / norms
    return result
