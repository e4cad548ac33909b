"""The embedding cache, in ``cache.db`` beside ``state.db`` (ports.EmbeddingCache).

``synchronous=NORMAL`` and a thread of its own: losing a cache entry only costs a re-embedding,
and a cache write never waits behind a state commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from headwater.adapters.sqlite.base import IN_BATCH, MetadataFiles
from headwater.models import Vectors

CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    embedder_id TEXT NOT NULL, chunk_hash TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (embedder_id, chunk_hash)
) WITHOUT ROWID;
"""


class EmbeddingCacheFile(MetadataFiles):
    """Implements ports.EmbeddingCache on the ``embeddings`` table of ``cache.db``."""

    async def get_vectors(self, embedder_id: str, chunk_hashes: Sequence[str]) -> dict[str, Vectors]:
        import numpy as np

        def _get() -> dict[str, Vectors]:
            assert self._cache is not None
            found: dict[str, Vectors] = {}
            hashes = list(chunk_hashes)
            for start in range(0, len(hashes), IN_BATCH):
                part = hashes[start : start + IN_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._cache.execute(
                    "SELECT chunk_hash, vector FROM embeddings WHERE embedder_id = ? "
                    f"AND chunk_hash IN ({marks})",
                    [embedder_id, *part],
                )
                for chunk_hash, blob in rows:
                    found[chunk_hash] = np.frombuffer(blob, dtype=np.float32)
            return found

        return await self._cache_thread.call(_get)

    async def put_vectors(self, embedder_id: str, vectors: dict[str, Vectors]) -> None:
        import numpy as np

        def _put() -> None:
            assert self._cache is not None
            with self._cache:
                self._cache.execute("BEGIN")
                self._cache.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                    [(embedder_id, h, v.astype(np.float32).tobytes()) for h, v in vectors.items()],
                )

        await self._cache_thread.call(_put)
