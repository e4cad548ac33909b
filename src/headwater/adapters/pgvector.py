"""pgvector: the chunk vectors in a PostgreSQL table, for teams whose index lives in their database.

``pgvector://USER[:PASSWORD]@HOST:PORT/DB?table=chunks`` (libpq's usual places work too:
``PGPASSWORD``, ``~/.pgpass``, ``sslmode=…`` in the query). One row per chunk, keyed by
``chunk_id``, with the document's columns and an ``embedding vector(D)`` column; several homes or
workers may share one table (every write is one transaction, and every write is keyed, so two
writers converge). Scores are cosine similarity (``1 - (embedding <=> query)``), higher is better.

Which index answers a query: none is built by ``ingest``, so a query is an exact scan (exact
hits, the same top k as every other store; fine to a few hundred thousand rows).
``headwater optimize`` builds an HNSW index (``vector_cosine_ops``, pgvector's defaults) once,
after the bulk load, when building it is cheapest; from then on queries are approximate, and a
filtered query scans iteratively (``hnsw.iterative_scan``) so a prefix still gets k hits.

Why a temporary table and COPY for upserts: a batch is copied in binary (vectors included) and
merged with one ``INSERT … ON CONFLICT``, ~10x fewer round trips than a row per statement.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from headwater.adapters.postgres.connection import connect, errors, reason
from headwater.errors import ConfigError
from headwater.models import Chunk, Vectors
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

_COLUMNS = (
    "doc_id", "chunk_id", "uri", "offset", "length", "chunk_hash", "text",
    "source_start", "source_end", "page", "page_end",
)  # fmt: skip
_TYPES = ["text", "text", "text", "int8", "int8", "text", "text", "int8", "int8", "int8", "int8", "vector"]
_POSITIONS = ("uri", "offset", "length", "source_start", "source_end", "page", "page_end")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SCAN_ROWS = 2000
_WHAT = "vector store"
_POOL_SIZE = 4  # one writer, and a few concurrent queries for a server


def parse_url(url: str) -> tuple[str, str]:
    """``pgvector://…?table=T`` → (libpq conninfo URL, table); the table may be ``schema.table``."""
    parts = urlsplit(url)
    if parts.scheme != "pgvector" or not parts.netloc or parts.path in ("", "/"):
        msg = f"vector store URL {redact_url(url)!r} must look like pgvector://USER@HOST:PORT/DB?table=chunks"
        raise ConfigError(msg)
    query = dict(parse_qsl(parts.query))
    table = query.pop("table", "chunks")
    if not all(_NAME.fullmatch(part) for part in table.split(".")) or table.count(".") > 1:
        msg = (
            f"vector store URL {redact_url(url)!r}: table {table!r} is not a plain name "
            "(letters, digits and _, optionally schema.table)"
        )
        raise ConfigError(msg)
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    return conninfo, table


class PgVectorStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo, self._table = parse_url(url)
        self._pool: AsyncConnectionPool[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self, dimensions: int) -> None:
        if self._pool is not None:
            return
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        # The schema first, on a connection of its own: the pool's connections register the
        # vector type as they connect, which needs the extension to exist.
        conn = await connect(self.url, self._conninfo, _WHAT)
        try:
            async with conn, errors(self.url, _WHAT), conn.transaction():
                await self._ensure_schema(conn, dimensions)
        except psycopg.Error as exc:  # the server refused: privileges, a clash with another table
            msg = f"cannot open the vector store {redact_url(self.url)}: {reason(exc)}"
            raise ConfigError(msg) from exc
        # ``check``: a connection is tested as it leaves the pool (one round trip), so after a
        # server restart an idle connection is replaced instead of failing the next write.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=_POOL_SIZE,
            open=False,
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open()
        self._pool = pool

    async def _ensure_schema(self, conn: AsyncConnection[Any], dimensions: int) -> None:
        """Extension, table and doc_id index, created once under an advisory lock (two workers
        opening a new table at the same time would otherwise race on the catalog)."""
        import psycopg

        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"headwater:{self._table}"])
        if not await (await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).fetchone():
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                msg = (
                    f"the database of {redact_url(self.url)} has no pgvector extension and this user "
                    f"cannot create it ({reason(exc)}): run CREATE EXTENSION vector as its owner"
                )
                raise ConfigError(msg) from exc
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {self._table} (
                chunk_id text PRIMARY KEY, doc_id text NOT NULL, uri text NOT NULL,
                "offset" bigint NOT NULL, length bigint NOT NULL, chunk_hash text NOT NULL,
                text text NOT NULL, source_start bigint, source_end bigint, page bigint,
                page_end bigint, embedding vector({int(dimensions)}) NOT NULL)"""
        )
        index = f"{self._table.replace('.', '_')}_doc_id"
        await conn.execute(f"CREATE INDEX IF NOT EXISTS {index.rsplit('.', 1)[-1]} ON {self._table} (doc_id)")
        row = await (
            await conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'",
                [self._table],
            )
        ).fetchone()
        stored = int(row[0]) if row else -1
        if stored != dimensions:
            msg = (
                f"vector store {redact_url(self.url)} holds {stored}-dimensional vectors but the "
                f"embedder makes {dimensions}; use another --home or --vector-store for this embedder"
            )
            raise ConfigError(msg)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            msg = f"vector store {redact_url(self.url)} used before open()"
            raise RuntimeError(msg)
        return self._pool

    # -- writes ------------------------------------------------------------------------------------

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        """One transaction: COPY into a temporary table, then one merge. ``fresh`` changes
        nothing: a run that crashed after its upsert re-sends the rows as fresh, and a merge
        takes them either way."""
        if not chunks:
            return
        import numpy as np

        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        columns = ", ".join(f'"{c}"' for c in (*_COLUMNS, "embedding"))
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*_COLUMNS, "embedding") if c != "chunk_id")
        async with errors(self.url, _WHAT), self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE hw_stage (LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            async with conn.cursor() as cur:
                copy_sql = f"COPY hw_stage ({columns}) FROM STDIN WITH (FORMAT BINARY)"
                async with cur.copy(copy_sql) as copy:
                    copy.set_types(_TYPES)
                    for chunk, vector in zip(chunks, matrix, strict=True):
                        await copy.write_row([*(getattr(chunk, c) for c in _COLUMNS), vector])
            await conn.execute(
                f"INSERT INTO {self._table} ({columns}) SELECT {columns} FROM hw_stage "
                f"ON CONFLICT (chunk_id) DO UPDATE SET {updates}"
            )

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        sets = ", ".join(f'"{c}" = %s' for c in _POSITIONS)
        rows = [[*(getattr(c, p) for p in _POSITIONS), c.chunk_id] for c in chunks]
        pool = self.pool
        async with (
            errors(self.url, _WHAT),
            pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            await cur.executemany(f"UPDATE {self._table} SET {sets} WHERE chunk_id = %s", rows)

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        if not keep:
            return
        kept = [chunk_id for ids in keep.values() for chunk_id in ids]
        async with errors(self.url, _WHAT), self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                f"DELETE FROM {self._table} WHERE doc_id = ANY(%s) AND NOT (chunk_id = ANY(%s))",
                [sorted(keep), kept],
            )

    async def optimize(self) -> None:
        """Build the HNSW index (once; it then follows every write) and refresh the planner's
        statistics: ``headwater optimize``, after a bulk load."""
        name = f"{self._table.replace('.', '_')}_embedding_hnsw".rsplit(".", 1)[-1]
        async with errors(self.url, _WHAT), self.pool.connection() as conn:
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON {self._table} USING hnsw (embedding vector_cosine_ops)"
            )
            await conn.execute(f"ANALYZE {self._table}")

    # -- reads -------------------------------------------------------------------------------------

    async def count(self) -> int:
        async with errors(self.url, _WHAT), self.pool.connection() as conn:
            row = await (await conn.execute(f"SELECT count(*) FROM {self._table}")).fetchone()
        return int(row[0]) if row else 0

    async def search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        return await self._search(vector, k, None)

    async def search_prefix(self, vector: Vectors, k: int, uri_prefix: str) -> list[tuple[Chunk, float]]:
        return await self._search(vector, k, uri_prefix)

    async def _search(self, vector: Vectors, k: int, uri_prefix: str | None) -> list[tuple[Chunk, float]]:
        import numpy as np

        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        columns = ", ".join(f'"{c}"' for c in _COLUMNS)
        where = "WHERE starts_with(uri, %(prefix)s)" if uri_prefix is not None else ""
        sql = (
            f"SELECT {columns}, 1 - (embedding <=> %(q)s) AS score FROM {self._table} {where} "
            "ORDER BY embedding <=> %(q)s LIMIT %(k)s"  # this exact shape, or HNSW is not used
        )
        async with errors(self.url, _WHAT), self.pool.connection() as conn:
            rows = await (await conn.execute(sql, {"q": query, "prefix": uri_prefix, "k": k})).fetchall()
        return [(Chunk(**dict(zip(_COLUMNS, row[:-1], strict=True))), float(row[-1])) for row in rows]

    async def scan(self) -> AsyncIterator[Chunk]:
        """A server-side cursor, read ``_SCAN_ROWS`` at a time: memory does not grow with the table."""
        columns = ", ".join(f'"{c}"' for c in _COLUMNS)
        pool, select = self.pool, f"SELECT {columns} FROM {self._table}"
        async with (
            errors(self.url, _WHAT),
            pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="headwater_scan") as cur,
        ):
            cur.itersize = _SCAN_ROWS
            await cur.execute(select)
            async for row in cur:
                yield Chunk(**dict(zip(_COLUMNS, row, strict=True)))


async def _configure(conn: AsyncConnection[Any]) -> None:
    """Each pooled connection: the vector type registered (numpy arrays in, vectors out), and
    iterative HNSW scans for filtered queries (pgvector 0.8+; older servers ignore it)."""
    import psycopg
    from pgvector.psycopg import register_vector_async

    await conn.set_autocommit(True)
    await register_vector_async(conn)
    # pgvector < 0.8 has no iterative scans: a filtered ANN query may then return fewer than k.
    with contextlib.suppress(psycopg.Error):
        await conn.execute("SET hnsw.iterative_scan = strict_order")
