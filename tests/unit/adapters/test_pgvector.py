"""What is particular to pgvector (the shared behaviour is tests/contract/test_vector_store.py):
its URL, how a database that is down or wrong is reported, a table shared by two writers, and
queries after ``optimize`` built the HNSW index."""

from __future__ import annotations

import pytest
from tests.contract.test_vector_store import DIMS, chunks, vectors_for
from tests.servers import ServerProcess, free_port

from headwater.adapters.pgvector import PgVectorStore, parse_url
from headwater.errors import ConfigError, StoreUnavailable


def test_the_url_names_database_and_table_and_keeps_libpq_options() -> None:
    conninfo, table = parse_url("pgvector://me:pw@db.example:6543/rag?table=docs.chunks&sslmode=require")
    assert (conninfo, table) == ("postgresql://me:pw@db.example:6543/rag?sslmode=require", "docs.chunks")
    assert parse_url("pgvector://me@h/db")[1] == "chunks"


@pytest.mark.parametrize(
    "url",
    [
        "pgvector://me@h:5432",  # no database
        "postgresql://me@h/db",  # another scheme
        "pgvector://me@h/db?table=chunks;drop table x",
        "pgvector://me@h/db?table=a.b.c",
        'pgvector://me@h/db?table="x"',
    ],
)
def test_a_malformed_url_or_table_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        PgVectorStore(url.replace("me@", "me:s3cret@"))
    assert "s3cret" not in str(refused.value)


async def test_a_server_that_does_not_answer_is_unavailable_not_misconfigured() -> None:
    store = PgVectorStore(f"pgvector://postgres:s3cret@127.0.0.1:{free_port()}/postgres?table=t")
    with pytest.raises(StoreUnavailable) as down:
        await store.open(DIMS)
    assert "s3cret" not in str(down.value) and "Connection refused" in str(down.value)


async def test_a_missing_database_is_a_configuration_error(pgvector_server: ServerProcess) -> None:
    store = PgVectorStore(f"pgvector://{pgvector_server.netloc}/nowhere?table=t")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match='database "nowhere" does not exist'):
        await store.open(DIMS)


async def test_two_writers_on_one_table_see_each_others_rows(
    pgvector_server: ServerProcess, unique: str
) -> None:
    url = f"pgvector://{pgvector_server.netloc}/postgres?table=shared_{unique}"  # type: ignore[attr-defined]
    first, second = PgVectorStore(url), PgVectorStore(url)
    await first.open(DIMS)
    await second.open(DIMS)
    try:
        a, b = chunks("a", 3), chunks("b", 2)
        await first.upsert(a, vectors_for(a), fresh=True)
        await second.upsert(b + a[:1], vectors_for(b + a[:1]))  # one row both wrote: still one row
        assert await first.count() == await second.count() == 5
        await second.delete_stale({"a": set()})
        assert sorted([c.chunk_id async for c in first.scan()]) == ["b-c0", "b-c1"]
    finally:
        await first.close()
        await second.close()


async def test_after_optimize_queries_use_hnsw_and_a_prefix_still_gets_k_hits(
    pgvector_server: ServerProcess, unique: str
) -> None:
    import psycopg

    url = f"pgvector://{pgvector_server.netloc}/postgres?table=ann_{unique}"  # type: ignore[attr-defined]
    store = PgVectorStore(url)
    await store.open(DIMS)
    try:
        near, far = chunks("near", 300), chunks("far/x", 5, prefix="unrelated")
        await store.upsert(near + far, vectors_for(near + far), fresh=True)
        await store.optimize()
        await store.optimize()  # idempotent
        with psycopg.connect(pgvector_server.url) as conn:
            indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [f"ann_{unique}"])
            assert any("hnsw" in row[0] and "vector_cosine_ops" in row[0] for row in indexes)
        hits = await store.search(vectors_for([near[7]])[0], 3)
        assert hits[0][0].chunk_id == near[7].chunk_id and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        filtered = await store.search_prefix(vectors_for([near[7]])[0], 5, "far/")
        assert sorted(c.chunk_id for c, _ in filtered) == sorted(c.chunk_id for c in far)
    finally:
        await store.close()


async def test_connections_killed_by_the_server_are_replaced_before_use(
    pgvector_server: ServerProcess, unique: str
) -> None:
    import psycopg

    url = f"pgvector://{pgvector_server.netloc}/postgres?table=blip_{unique}"  # type: ignore[attr-defined]
    store = PgVectorStore(url)
    await store.open(DIMS)
    try:
        items = chunks("a", 2)
        await store.upsert(items, vectors_for(items), fresh=True)
        with psycopg.connect(pgvector_server.url, autocommit=True) as admin:  # every session of ours dies
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = 'postgres'"
            )
        assert await store.count() == 2  # the pool tested its idle connection and replaced it
    finally:
        await store.close()
