"""FAISS specifics the vector store contract does not cover: the index file is a cache that is
rebuilt whenever it cannot be shown to match the SQLite rows (a writer killed before close, a
lagging, torn or garbage file), a reader follows a writer's later writes, and uri prefixes are
matched literally."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from headwater.adapters.faiss import DB_FILE, INDEX_FILE, RECORD_FILE, FaissVectorStore
from headwater.adapters.hashembed import embed_hash
from headwater.errors import ConfigError
from headwater.models import Chunk
from headwater.ports import Compactable

DIMS = 16


def chunks(doc_id: str, n: int, uri: str | None = None) -> list[Chunk]:
    return [
        Chunk(
            doc_id=doc_id,
            chunk_id=f"{doc_id}-c{i}",
            uri=uri if uri is not None else f"{doc_id}.md",
            offset=i * 10,
            length=10,
            chunk_hash=f"h-{doc_id}-{i}",
            text=f"text of {doc_id} number {i}",
        )
        for i in range(n)
    ]


def vectors(items: list[Chunk]) -> np.ndarray:
    return embed_hash([c.text for c in items], DIMS)


def url(folder: Path) -> str:
    return f"faiss://{folder}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaissVectorStore]:
    instance = FaissVectorStore(url(tmp_path / "faiss"))
    await instance.open(DIMS)
    yield instance
    await instance.close()


async def contents(folder: Path, probes: list[Chunk]) -> tuple[int, list[str], list[str]]:
    """What a fresh instance finds: the count, the scanned ids, and the top hit of each probe
    (each probe's own chunk when the index holds its vector)."""
    reader = FaissVectorStore(url(folder))
    await reader.open(DIMS)
    try:
        count = await reader.count()
        scanned = sorted([c.chunk_id async for c in reader.scan()])
        top = [(await reader.search(v, 1))[0][0].chunk_id for v in vectors(probes)]
    finally:
        await reader.close()
    return count, scanned, top


def record_version(folder: Path) -> int:
    return int(json.loads((folder / RECORD_FILE).read_text())["version"])


def db_version(folder: Path) -> int:
    db = sqlite3.connect(folder / DB_FILE)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize(
    "bad", ["faiss://relative/folder", "faiss:folder", "faiss://", "lancedb:///abs/folder", "faiss://h/x"]
)
def test_a_url_of_another_shape_is_a_config_error_naming_the_shape(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"faiss:///absolute/path/to/folder"):
        FaissVectorStore(bad)


async def test_a_writer_killed_before_close_leaves_a_lagging_file_that_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "faiss"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from headwater.adapters.faiss import FaissVectorStore
        from headwater.adapters.hashembed import embed_hash
        from headwater.models import Chunk

        def chunks(doc_id, n):
            return [
                Chunk(doc_id=doc_id, chunk_id=f"{{doc_id}}-c{{i}}", uri=f"{{doc_id}}.md", offset=i * 10,
                      length=10, chunk_hash=f"h-{{doc_id}}-{{i}}", text=f"text of {{doc_id}} number {{i}}")
                for i in range(n)
            ]

        def vectors(items):
            return embed_hash([c.text for c in items], {DIMS})

        async def main():
            first = FaissVectorStore({url(folder)!r})
            await first.open({DIMS})
            a = chunks("a", 5)
            await first.upsert(a, vectors(a), fresh=True)
            await first.close()  # the index file: a's rows
            second = FaissVectorStore({url(folder)!r})
            await second.open({DIMS})
            b = chunks("b", 4)
            await second.upsert(b, vectors(b), fresh=True)
            await second.delete_stale({{"a": {{"a-c0", "a-c1"}}}})
            os.kill(os.getpid(), signal.SIGKILL)  # no close: the file lags the rows

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert record_version(folder) < db_version(folder)
    b = chunks("b", 4)
    count, scanned, top = await contents(folder, b)
    assert count == 6
    assert scanned == ["a-c0", "a-c1", *(c.chunk_id for c in b)]
    assert top == [c.chunk_id for c in b]
    assert record_version(folder) == db_version(folder)  # the rebuilt index was saved at close


async def test_an_index_file_older_than_the_rows_is_not_trusted(tmp_path: Path) -> None:
    """The same number of rows, other vectors: only the version tells the file is stale."""
    folder = tmp_path / "faiss"
    a = chunks("a", 3)
    changed = [Chunk(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "text": c.text + "!"}) for c in a]
    writer = FaissVectorStore(url(folder))
    await writer.open(DIMS)
    await writer.upsert(a, vectors(a), fresh=True)
    await writer.close()
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in (INDEX_FILE, RECORD_FILE):
        shutil.copy2(folder / name, kept / name)
    await writer.open(DIMS)
    await writer.upsert(changed, vectors(changed))
    await writer.close()
    for name in (INDEX_FILE, RECORD_FILE):  # the file and record of the first run, whole
        shutil.copy2(kept / name, folder / name)
    reader = FaissVectorStore(url(folder))
    await reader.open(DIMS)
    try:
        for probe in changed:
            hit, score = (await reader.search(vectors([probe])[0], 1))[0]
            assert (hit.text, score) == (probe.text, pytest.approx(1.0, abs=1e-5))
    finally:
        await reader.close()


async def test_a_current_index_file_is_loaded_not_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "faiss"
    a = chunks("a", 4)
    writer = FaissVectorStore(url(folder))
    await writer.open(DIMS)
    await writer.upsert(a, vectors(a), fresh=True)
    await writer.close()

    def no_rebuild(*_: object) -> None:
        raise AssertionError("rebuilt although the index file was current")

    monkeypatch.setattr(FaissVectorStore, "_rebuild", no_rebuild)
    count, _, top = await contents(folder, a)
    assert (count, top) == (4, [c.chunk_id for c in a])


@pytest.mark.parametrize("damage", ["torn", "garbage", "missing", "record garbage"])
async def test_a_damaged_index_file_is_rebuilt_and_saved_again(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "faiss"
    a = chunks("a", 6)
    writer = FaissVectorStore(url(folder))
    await writer.open(DIMS)
    await writer.upsert(a, vectors(a), fresh=True)
    await writer.close()
    index = folder / INDEX_FILE
    size = index.stat().st_size
    if damage == "torn":
        with index.open("r+b") as file:
            file.truncate(size // 2)
    elif damage == "garbage":
        index.write_bytes(os.urandom(size))
    elif damage == "missing":
        index.unlink()
    else:
        (folder / RECORD_FILE).write_bytes(b"\x00{not json")
    count, scanned, top = await contents(folder, a)
    assert count == 6
    assert scanned == sorted(c.chunk_id for c in a)
    assert top == [c.chunk_id for c in a]
    assert index.stat().st_size == size  # rewritten whole at close
    assert record_version(folder) == db_version(folder)


async def test_a_reader_sees_a_writers_later_writes(tmp_path: Path) -> None:
    folder = tmp_path / "faiss"
    writer, reader = FaissVectorStore(url(folder)), FaissVectorStore(url(folder))
    await writer.open(DIMS)
    await reader.open(DIMS)
    try:
        a, b = chunks("a", 3), chunks("b", 3)
        await writer.upsert(a, vectors(a), fresh=True)
        assert await reader.count() == 3
        await writer.upsert(b, vectors(b), fresh=True)
        assert await reader.count() == 6
        hit, score = (await reader.search(vectors([b[2]])[0], 1))[0]
        assert hit.chunk_id == "b-c2"
        assert score == pytest.approx(1.0, abs=1e-5)
        await writer.delete_stale({"b": {"b-c0"}})
        assert await reader.count() == 4
        found = {c.chunk_id for c, _ in await reader.search(vectors([b[2]])[0], 10)}
        assert found == {"a-c0", "a-c1", "a-c2", "b-c0"}
        moved = [Chunk(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "offset": 500}) for c in a]
        await writer.update_positions(moved)
        assert {c.offset async for c in reader.scan() if c.doc_id == "a"} == {500}
        assert (await reader.search(vectors([a[0]])[0], 1))[0][0].offset == 500
    finally:
        await writer.close()
        await reader.close()


async def test_uri_prefixes_match_literally_quotes_and_like_wildcards_included(
    store: FaissVectorStore,
) -> None:
    uris = {
        "pct": "a%b/x.md",
        "pctx": "aXb/x.md",
        "und": "a_b/y.md",
        "undx": "acb/y.md",
        "quote": "it's/z.md",
        "noquote": "its/z.md",
        "accent": "é/1.md",
        "accentx": "éa/1.md",
        "top": "\U0010ffff/x.md",
    }
    items = [c for doc, uri in uris.items() for c in chunks(doc, 2, uri=uri)]
    await store.upsert(items, vectors(items), fresh=True)
    probe = vectors(items[:1])[0]

    async def docs(prefix: str, k: int = 50) -> set[str]:
        return {c.doc_id for c, _ in await store.search_prefix(probe, k, prefix)}

    assert await docs("a%b/") == {"pct"}
    assert await docs("a_b/") == {"und"}
    assert await docs("it's/") == {"quote"}
    assert await docs("é/") == {"accent"}
    assert await docs("é") == {"accent", "accentx"}
    assert await docs("\U0010ffff") == {"top"}
    assert await docs("a%") == {"pct"}
    assert await docs("") == set(uris)
    assert len(await store.search_prefix(probe, 3, "a")) == 3  # k of the 8 under "a"


async def test_a_fresh_upsert_of_stored_ids_replaces_them(store: FaissVectorStore) -> None:
    """``fresh`` is a promise a crashed run's replay can break: it falls back to the merge, and
    the index keeps one entry per row."""
    a = chunks("a", 3)
    await store.upsert(a, vectors(a), fresh=True)
    changed = [Chunk(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "text": c.text + "!"}) for c in a]
    await store.upsert(changed, vectors(changed), fresh=True)
    assert await store.count() == 3
    hits = await store.search(vectors(changed[:1])[0], 10)
    assert len(hits) == 3
    assert hits[0][0].text == changed[0].text
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)


async def test_k_beyond_the_rows_and_an_empty_store(store: FaissVectorStore) -> None:
    probe = vectors(chunks("a", 1))[0]
    assert await store.search(probe, 5) == []
    a = chunks("a", 2)
    await store.upsert(a, vectors(a), fresh=True)
    assert len(await store.search(probe, 1000)) == 2
    assert len(await store.search_prefix(probe, 1000, "a.")) == 2


async def test_a_full_disk_stops_the_run_naming_the_folder(
    store: FaissVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr("headwater.adapters.faiss._write_rows", full)
    a = chunks("a", 2)
    with pytest.raises(OSError) as caught:
        await store.upsert(a, vectors(a))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(store.path)
    assert await store.count() == 0


async def test_optimize_keeps_the_ids_and_saves_a_current_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VACUUM keeps an INTEGER PRIMARY KEY, so the FAISS ids still name the same rows."""
    folder = tmp_path / "faiss"
    store = FaissVectorStore(url(folder))
    assert isinstance(store, Compactable)
    await store.open(DIMS)
    a, b = chunks("a", 40), chunks("b", 3)
    await store.upsert(a + b, vectors(a + b), fresh=True)
    await store.delete_stale({"a": set()})
    await store.optimize()
    assert record_version(folder) == db_version(folder)
    monkeypatch.setattr(FaissVectorStore, "_rebuild", None)  # the saved file must do
    await store.close()
    count, scanned, top = await contents(folder, b)
    assert (count, scanned, top) == (3, ["b-c0", "b-c1", "b-c2"], ["b-c0", "b-c1", "b-c2"])
