"""The schema, as an ordered list of steps: step N brings a schema from version N - 1 to N.

Applied by ``open`` (``ingest`` on a new schema) and by ``headwater migrate``, once: two processes
starting together take the same transaction-scoped advisory lock, and the second finds the
schema already at the version it wants. A schema newer than this code knows is refused, never
written to. A step is only ever appended: a released step is not edited.

Ids and uris are ``COLLATE "C"``: byte order, as in the SQLite store, so listings come out in the
same order whatever the database's locale, and comparisons need no locale rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.adapters.postgres.connection import quoted
from headwater.errors import ConfigError
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: documents, chunk keys, dead letters, the embedding cache, settings
        """CREATE TABLE documents (
            doc_id text COLLATE "C" PRIMARY KEY, source text COLLATE "C" NOT NULL,
            uri text COLLATE "C" NOT NULL, content_hash text, size bigint NOT NULL DEFAULT 0,
            mtime_ns bigint NOT NULL DEFAULT 0, status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0, error_count integer NOT NULL DEFAULT 0,
            version bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())""",
        # ``versions`` and ``unseen`` answered from the index alone (an index-only scan).
        "CREATE INDEX documents_listing ON documents (source, uri) INCLUDE (size, mtime_ns, status, doc_id)",
        """CREATE TABLE chunks (
            doc_id text COLLATE "C" NOT NULL, chunk_id text COLLATE "C" NOT NULL,
            chunk_hash text NOT NULL, PRIMARY KEY (doc_id, chunk_id))""",
        """CREATE TABLE dlq (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL,
            input_ref text NOT NULL, source text NOT NULL, stage text NOT NULL,
            error_type text NOT NULL, message text NOT NULL, traceback text NOT NULL,
            attempts integer NOT NULL, created_at text NOT NULL, replayed_at text, payload bytea)""",
        """CREATE TABLE embeddings (
            embedder_id text COLLATE "C" NOT NULL, chunk_hash text COLLATE "C" NOT NULL,
            vector bytea NOT NULL, PRIMARY KEY (embedder_id, chunk_hash))""",
        'CREATE TABLE settings (key text COLLATE "C" PRIMARY KEY, value text NOT NULL)',
    ),
    (  # 2: jobs and their journal (the job store, adapters/postgres/jobs.py), with their leases
        """CREATE TABLE jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, id text COLLATE "C" PRIMARY KEY,
            kind text NOT NULL, spec text NOT NULL, priority integer NOT NULL, status text NOT NULL,
            reason text, progress text NOT NULL DEFAULT '{}', runs integer NOT NULL DEFAULT 0,
            created_at text NOT NULL, updated_at text NOT NULL,
            lease_owner text, lease_until timestamptz)""",
        "CREATE INDEX jobs_queue ON jobs (status, priority DESC, seq)",
        """CREATE TABLE job_events (
            job_id text COLLATE "C" NOT NULL, seq integer NOT NULL, at text NOT NULL,
            data text NOT NULL, PRIMARY KEY (job_id, seq))""",
    ),
)
LATEST_VERSION = len(MIGRATIONS)


async def schema_version(conn: AsyncConnection[Any], schema: str) -> int:
    """The version of ``schema`` (0: no schema, or none of headwater's)."""
    found = await (
        await conn.execute("SELECT to_regclass(%s)", [f"{quoted(schema)}.schema_version"])
    ).fetchone()
    if found is None or found[0] is None:
        return 0
    row = await (await conn.execute(f"SELECT max(version) FROM {quoted(schema)}.schema_version")).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def refuse_newer(url: str, schema: str, version: int) -> None:
    if version > LATEST_VERSION:
        msg = (
            f"metadata store {redact_url(url)} (schema {schema}): schema version {version} is newer "
            f"than this headwater understands ({LATEST_VERSION}): upgrade headwater"
        )
        raise ConfigError(msg)


async def migrate(conn: AsyncConnection[Any], url: str, schema: str) -> tuple[int, int]:
    """Bring ``schema`` to ``LATEST_VERSION`` in one transaction; (version before, after).

    ``conn`` is in autocommit mode; everything, the schema's creation included, happens under
    the advisory lock, so a concurrent migration waits and then finds nothing left to do."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"headwater:migrate:{schema}"])
        exists = await (
            await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        ).fetchone()
        if not exists:
            await conn.execute(f"CREATE SCHEMA {quoted(schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted(schema)}.schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = await schema_version(conn, schema)
        refuse_newer(url, schema, before)
        await conn.execute(f"SET LOCAL search_path TO {quoted(schema)}")
        for version in range(before + 1, LATEST_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", [version])
    return before, LATEST_VERSION
