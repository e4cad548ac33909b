"""The PostgreSQL metadata store: one class composed of the tables' modules, opened and closed
together (ports.MetadataStore), plus the index's settings.

Every write that the port says is durable commits before it returns (``synchronous_commit`` as
the server has it, ``on`` by default); claims, touches and cache entries commit without waiting
for the WAL flush. ``open`` brings the schema to this code's version (``migrations``) and refuses
a newer one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.adapters.postgres.cache import EmbeddingCacheTable
from headwater.adapters.postgres.connection import connect, reason
from headwater.adapters.postgres.dead_letters import DeadLetterTable
from headwater.adapters.postgres.documents import DocumentTables
from headwater.adapters.postgres.migrations import LATEST_VERSION, migrate, refuse_newer, schema_version
from headwater.errors import ConfigError, StoreUnavailable
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

_POOL_SIZE = 4  # the pipeline's writer, its cache writes and lookups, and a reader or two


class PostgresMetadataStore(DocumentTables, DeadLetterTable, EmbeddingCacheTable):
    """Implements ports.MetadataStore: DocumentState, DeadLetters, EmbeddingCache and
    SettingsStore in one schema of a PostgreSQL database, shared by every home and worker that
    names it."""

    async def open(self) -> None:
        if self._pool is not None:
            return
        from psycopg_pool import AsyncConnectionPool

        await self.migrate(only_if_behind=True)
        # ``check``: a connection is tested as it leaves the pool (one round trip), so after a
        # server restart an idle connection is replaced instead of failing the next write.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=_POOL_SIZE,
            open=False,
            configure=self.configure,
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open()
        self._pool = pool

    async def migrate(self, *, only_if_behind: bool = False) -> tuple[int, int]:
        """Bring the schema to this code's version: (version before, after). ``headwater
        migrate`` runs it; ``open`` too, which takes the migration lock only when behind."""
        import psycopg

        conn = await connect(self.url, self.conninfo)
        try:
            async with conn:
                before = await schema_version(conn, self.schema)
                refuse_newer(self.url, self.schema, before)
                if only_if_behind and before == LATEST_VERSION:
                    return before, before
                return await migrate(conn, self.url, self.schema)
        except psycopg.OperationalError as exc:
            msg = f"metadata store {redact_url(self.url)} unavailable: {reason(exc)}"
            raise StoreUnavailable(msg) from exc
        except psycopg.Error as exc:  # no right to create the schema, or a table in the way
            where = f"{redact_url(self.url)} (schema {self.schema})"
            msg = f"cannot prepare the metadata store {where}: {reason(exc)}"
            raise ConfigError(msg) from exc

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
