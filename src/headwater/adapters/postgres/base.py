"""What the PostgreSQL stores share: the URL, the schema brought to this code's version, the
connection pool and one-transaction calls. The metadata store's tables (documents, dead
letters, cache, settings) and the job store build on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from headwater.adapters.postgres.connection import connect, errors, parse_url, quoted, reason
from headwater.adapters.postgres.migrations import LATEST_VERSION, migrate, refuse_newer, schema_version
from headwater.errors import ConfigError
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


class PostgresBase:
    """The URL (checked, no I/O) and, once ``open`` made it, the pool."""

    what = "metadata store"  # how messages name the store
    pool_size = 4

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = parse_url(url)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._scan: AsyncConnection[Any] | None = None  # the seen set's own connection
        self._scan_made: asyncio.Lock | None = None  # made by the first note_seen, in its loop

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            msg = f"{self.what} {redact_url(self.url)} used before open()"
            raise RuntimeError(msg)
        return self._pool

    async def open(self) -> None:
        """The schema at this code's version, then the pool. ``check``: a connection is tested
        as it leaves the pool (one round trip), so after a server restart an idle connection is
        replaced instead of failing the next write."""
        if self._pool is not None:
            return
        from psycopg_pool import AsyncConnectionPool

        await self.migrate(only_if_behind=True)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
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

        conn = await connect(self.url, self.conninfo, self.what)
        try:
            async with conn, errors(self.url, self.what):
                before = await schema_version(conn, self.schema)
                refuse_newer(self.url, self.schema, before)
                if only_if_behind and before == LATEST_VERSION:
                    return before, before
                return await migrate(conn, self.url, self.schema)
        except psycopg.Error as exc:  # no right to create the schema, or a table in the way
            where = f"{redact_url(self.url)} (schema {self.schema})"
            msg = f"cannot prepare the {self.what} {where}: {reason(exc)}"
            raise ConfigError(msg) from exc

    async def configure(self, conn: AsyncConnection[Any]) -> None:
        """Every connection: autocommit (a call opens its own transaction) in the schema."""
        await conn.set_autocommit(True)
        await conn.execute(f"SET search_path TO {quoted(self.schema)}")

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[AsyncConnection[Any]]:
        """One transaction, committed when the block ends. ``durable=False`` for writes that need
        only survive this process (a claim, a touch, a cache entry): the commit does not wait for
        the server's WAL flush, so a server crash may lose the last of them, never corrupt."""
        async with errors(self.url, self.what), self.pool.connection() as conn, conn.transaction():
            if not durable:
                await conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    async def fetch(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """A read, on a connection of the pool (it sees every write that returned)."""
        async with errors(self.url, self.what), self.pool.connection() as conn:
            rows: list[tuple[Any, ...]] = await (await conn.execute(sql, params)).fetchall()
        return rows


def utc_now() -> str:
    """Dead letters keep their times as ISO text, as in the SQLite store (a letter may bring its own)."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
