"""The embedding cache, in the schema's ``embeddings`` table (ports.EmbeddingCache).

Written without waiting for the server's WAL flush (``tx(durable=False)``): losing a cache entry
only costs a re-embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

from headwater.adapters.postgres.base import PostgresBase
from headwater.models import Vectors


class EmbeddingCacheTable(PostgresBase):
    """Implements ports.EmbeddingCache on the ``embeddings`` table."""

    async def get_vectors(self, embedder_id: str, chunk_hashes: Sequence[str]) -> dict[str, Vectors]:
        import numpy as np

        if not chunk_hashes:
            return {}
        rows = await self.fetch(
            "SELECT chunk_hash, vector FROM embeddings WHERE embedder_id = %s AND chunk_hash = ANY(%s)",
            [embedder_id, list(chunk_hashes)],
        )
        return {chunk_hash: np.frombuffer(bytes(blob), dtype=np.float32) for chunk_hash, blob in rows}

    async def put_vectors(self, embedder_id: str, vectors: dict[str, Vectors]) -> None:
        import numpy as np

        if not vectors:
            return
        hashes = sorted(vectors)
        blobs = [np.asarray(vectors[h], dtype=np.float32).tobytes() for h in hashes]
        async with self.tx(durable=False) as conn:
            await conn.execute(
                "INSERT INTO embeddings (embedder_id, chunk_hash, vector) "
                "SELECT %s, h, v FROM unnest(%s::text[], %s::bytea[]) AS t(h, v) "
                "ON CONFLICT (embedder_id, chunk_hash) DO UPDATE SET vector = excluded.vector",
                [embedder_id, hashes, blobs],
            )
