"""What is particular to the PostgreSQL metadata store (the shared behaviour is
tests/contract/test_metadata_store.py): its URL, the versioned schema (fresh, idempotent,
two processes at once, a newer one refused), claims of one document by two stores at once, the
scan's seen set on a lost connection, and how a database that is down or wrong is reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from tests.servers import ServerProcess, free_port

from headwater import registry
from headwater.adapters.postgres import LATEST_VERSION, PostgresMetadataStore, parse_url
from headwater.errors import ConfigError, StoreUnavailable


def _url(server: ServerProcess, schema: str) -> str:
    return f"postgresql://{server.netloc}/postgres?schema={schema}"  # type: ignore[attr-defined]


def _versions(server: ServerProcess, schema: str) -> list[int]:
    with psycopg.connect(server.url, autocommit=True) as admin:  # type: ignore[attr-defined]
        rows = admin.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version').fetchall()
    return [int(v) for (v,) in rows]


@pytest.fixture
async def store(pgvector_server: ServerProcess, unique: str) -> AsyncIterator[PostgresMetadataStore]:
    instance = PostgresMetadataStore(_url(pgvector_server, f"u{unique}"))
    await instance.open()
    yield instance
    await instance.close()


def test_the_url_names_the_schema_and_keeps_libpq_options() -> None:
    conninfo, schema = parse_url("postgresql://me:pw@db.example:6543/rag?schema=index_a&sslmode=require")
    assert (conninfo, schema) == ("postgresql://me:pw@db.example:6543/rag?sslmode=require", "index_a")
    assert parse_url("postgres://me@h/db") == ("postgresql://me@h/db", "headwater")
    assert isinstance(registry.create("metadata_store", "postgres://me@h/db"), PostgresMetadataStore)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://me@h:5432",  # no database
        "mysql://me@h/db",
        "postgresql://me@h/db?schema=a;drop schema x",
        "postgresql://me@h/db?schema=a.b",
        'postgresql://me@h/db?schema="x"',
    ],
)
def test_a_malformed_url_or_schema_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        PostgresMetadataStore(url.replace("me@", "me:s3cret@"))
    assert "s3cret" not in str(refused.value)


async def test_open_creates_the_schema_at_the_latest_version_once(
    pgvector_server: ServerProcess, unique: str
) -> None:
    schema = f"m{unique}"
    store = PostgresMetadataStore(_url(pgvector_server, schema))
    await store.open()
    await store.close()
    assert _versions(pgvector_server, schema) == list(range(1, LATEST_VERSION + 1))
    assert await store.migrate() == (LATEST_VERSION, LATEST_VERSION)  # idempotent
    await store.open()  # and opens again, its data intact
    await store.set_setting("k", "v")
    await store.close()
    assert _versions(pgvector_server, schema) == list(range(1, LATEST_VERSION + 1))
    assert await PostgresMetadataStore(_url(pgvector_server, f"n{unique}")).migrate() == (0, LATEST_VERSION)


async def test_two_processes_opening_a_new_schema_together_migrate_it_once(
    pgvector_server: ServerProcess, unique: str
) -> None:
    schema = f"c{unique}"
    stores = [PostgresMetadataStore(_url(pgvector_server, schema)) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert _versions(pgvector_server, schema) == list(range(1, LATEST_VERSION + 1))
        await stores[0].set_setting("k", "v")
        assert await stores[3].get_setting("k") == "v"
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_newer_than_this_code_is_refused(pgvector_server: ServerProcess, unique: str) -> None:
    schema = f"v{unique}"
    url = _url(pgvector_server, schema)
    await PostgresMetadataStore(url).migrate()
    with psycopg.connect(pgvector_server.url, autocommit=True) as admin:  # type: ignore[attr-defined]
        admin.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', [LATEST_VERSION + 1])
    newer = f"schema version {LATEST_VERSION + 1} is newer than this headwater understands ({LATEST_VERSION})"
    for attempt in (PostgresMetadataStore(url).open, PostgresMetadataStore(url).migrate):
        with pytest.raises(ConfigError, match="upgrade headwater") as refused:
            await attempt()
        assert newer in str(refused.value)


async def test_two_stores_claiming_one_document_at_once_count_every_attempt(
    pgvector_server: ServerProcess, unique: str
) -> None:
    """Two workers on two machines: the database serializes the claims, no attempt is lost."""
    url = _url(pgvector_server, f"a{unique}")
    first, second = PostgresMetadataStore(url), PostgresMetadataStore(url)
    await asyncio.gather(first.open(), second.open())
    try:
        docs = [("d1", "file:///src", "d1.md"), ("d2", "file:///src", "d2.md")]
        claims = [s.claim(docs if i % 2 else docs[::-1]) for i in range(20) for s in (first, second)]
        results = await asyncio.gather(*claims)
        assert sorted(r["d1"] for r in results) == list(range(1, 41))
        assert sorted(r["d2"] for r in results) == list(range(1, 41))
        assert (await second.get_documents(["d1"]))["d1"].attempts == 40
        await first.release(["d1"])
        assert (await second.get_documents(["d1"]))["d1"].attempts == 39
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_one_database_holds_several_indexes_a_schema_each(
    pgvector_server: ServerProcess, unique: str
) -> None:
    a = PostgresMetadataStore(_url(pgvector_server, f"x{unique}"))
    b = PostgresMetadataStore(_url(pgvector_server, f"y{unique}"))
    await asyncio.gather(a.open(), b.open())
    try:
        await a.claim([("d1", "file:///src", "d1.md")])
        assert (await a.counts())["documents"] == 1
        assert (await b.counts())["documents"] == 0
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_scan_noting_batches_concurrently_keeps_every_one(store: PostgresMetadataStore) -> None:
    """Regression: the first batches raced to make the seen set's connection, and the batch on
    the connection that lost was forgotten: a cold run of 10,000 files deleted 1,024 of them."""
    uris = [f"d{i:04d}.md" for i in range(400)]
    await store.claim([(u.removesuffix(".md"), "file:///src", u) for u in [*uris, "gone.md"]])
    await asyncio.gather(*(store.note_seen(uris[i : i + 20]) for i in range(0, len(uris), 20)))
    assert [d.uri for d in await store.unseen("file:///src", 1000)] == ["gone.md"]


async def test_a_lost_seen_set_fails_the_scan_instead_of_deleting_everything(
    store: PostgresMetadataStore, pgvector_server: ServerProcess
) -> None:
    await store.claim([("a", "file:///src", "a.md"), ("b", "file:///src", "b.md")])
    await store.note_seen(["a.md"])
    assert [d.doc_id for d in await store.unseen("file:///src", 10)] == ["b"]
    assert store._scan is not None
    with psycopg.connect(pgvector_server.url, autocommit=True) as admin:  # type: ignore[attr-defined]
        admin.execute("SELECT pg_terminate_backend(%s)", [store._scan.info.backend_pid])
    with pytest.raises(StoreUnavailable):
        await store.unseen("file:///src", 10)
    assert await store.counts() == {"documents": 2, "chunks": 0, "dlq": 0, "documents_pending": 2}


async def test_a_server_that_does_not_answer_is_unavailable_not_misconfigured() -> None:
    store = PostgresMetadataStore(f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(StoreUnavailable) as down:
        await store.open()
    assert "s3cret" not in str(down.value) and "Connection refused" in str(down.value)


async def test_a_missing_database_is_a_configuration_error(pgvector_server: ServerProcess) -> None:
    store = PostgresMetadataStore(f"postgresql://{pgvector_server.netloc}/nowhere")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match='database "nowhere" does not exist'):
        await store.open()
