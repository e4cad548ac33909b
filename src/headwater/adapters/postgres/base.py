"""The metadata store's shared parts: its URL, its connection pool and one-transaction calls.
The tables' modules (documents, dead letters, cache, settings) build on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from headwater.adapters.postgres.connection import errors, parse_url, quoted
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


class PostgresBase:
    """The URL (checked, no I/O) and, once the store's ``open`` made it, the pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = parse_url(url)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._scan: AsyncConnection[Any] | None = None  # the seen set's own connection
        self._scan_made: asyncio.Lock | None = None  # made by the first note_seen, in its loop

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            msg = f"metadata store {redact_url(self.url)} used before open()"
            raise RuntimeError(msg)
        return self._pool

    async def configure(self, conn: AsyncConnection[Any]) -> None:
        """Every connection: autocommit (a call opens its own transaction) in the schema."""
        await conn.set_autocommit(True)
        await conn.execute(f"SET search_path TO {quoted(self.schema)}")

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[AsyncConnection[Any]]:
        """One transaction, committed when the block ends. ``durable=False`` for writes that need
        only survive this process (a claim, a touch, a cache entry): the commit does not wait for
        the server's WAL flush, so a server crash may lose the last of them, never corrupt."""
        async with errors(self.url), self.pool.connection() as conn, conn.transaction():
            if not durable:
                await conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    async def fetch(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """A read, on a connection of the pool (it sees every write that returned)."""
        async with errors(self.url), self.pool.connection() as conn:
            rows: list[tuple[Any, ...]] = await (await conn.execute(sql, params)).fetchall()
        return rows


def utc_now() -> str:
    """Dead letters keep their times as ISO text, as in the SQLite store (a letter may bring its own)."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
