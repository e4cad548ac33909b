"""The PostgreSQL metadata store: one class composed of the tables' modules, opened and closed
together (ports.MetadataStore), plus the index's settings.

Every write that the port says is durable commits before it returns (``synchronous_commit`` as
the server has it, ``on`` by default); claims, touches and cache entries commit without waiting
for the WAL flush. ``open`` brings the schema to this code's version (``migrations``) and refuses
a newer one.
"""

from __future__ import annotations

from headwater.adapters.postgres.cache import EmbeddingCacheTable
from headwater.adapters.postgres.dead_letters import DeadLetterTable
from headwater.adapters.postgres.documents import DocumentTables


class PostgresMetadataStore(DocumentTables, DeadLetterTable, EmbeddingCacheTable):
    """Implements ports.MetadataStore: DocumentState, DeadLetters, EmbeddingCache and
    SettingsStore in one schema of a PostgreSQL database, shared by every home and worker that
    names it."""

    pool_size = 4  # the pipeline's writer, its cache writes and lookups, and a reader or two

    async def close(self) -> None:
        scan, self._scan, self._scan_made = self._scan, None, None
        pool, self._pool = self._pool, None
        if scan is not None:
            await scan.close()
        if pool is not None:
            await pool.close()

    async def get_setting(self, key: str) -> str | None:
        rows = await self.fetch("SELECT value FROM settings WHERE key = %s", [key])
        return str(rows[0][0]) if rows else None

    async def set_setting(self, key: str, value: str) -> None:
        async with self.tx() as conn:
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
