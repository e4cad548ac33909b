"""SQLite specifics the metadata contract does not cover: homes made by earlier versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from headwater.adapters.sqlite import SQLiteMetadataStore


async def test_a_home_with_chunks_keyed_by_chunk_id_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE chunks (
            chunk_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, chunk_hash TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX chunks_doc ON chunks (doc_id);
        INSERT INTO chunks VALUES ('c2', 'd1', 'h2'), ('c1', 'd1', 'h1'), ('c3', 'd2', 'h3');
        """
    )
    old.close()
    store = SQLiteMetadataStore(f"sqlite:///{path}")
    await store.open()
    try:
        found = await store.get_chunks(["d1", "d2"])
        assert {d: sorted(k.chunk_id for k in keys) for d, keys in found.items()} == {
            "d1": ["c1", "c2"],
            "d2": ["c3"],
        }
        assert sorted([k.chunk_id async for k in store.chunk_keys()]) == ["c1", "c2", "c3"]
    finally:
        await store.close()
    check = sqlite3.connect(path)
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
    (sql,) = check.execute("SELECT sql FROM sqlite_master WHERE name = 'chunks'").fetchone()
    check.close()
    assert "PRIMARY KEY (doc_id, chunk_id)" in sql
    assert "chunks_by_chunk_id" not in tables and "chunks_doc" not in tables
