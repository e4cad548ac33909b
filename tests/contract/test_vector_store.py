"""The VectorStore contract. Every adapter runs this same suite: add its URL template to ``STORES``
(``{tmp}``: the test's folder; ``{name}``: a fixture, e.g. a server; see tests/contract/urls.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from headwater import registry
from headwater.adapters.hashembed import embed_hash
from headwater.errors import ConfigError
from headwater.models import Chunk
from headwater.ports import SearchesByPrefix, VectorStore
from tests.contract.urls import adapter_url, url_id

STORES = ["lancedb://{tmp}/vectors", "faiss://{tmp}/faiss"]
STORES += ["pgvector://{pgvector_server.netloc}/postgres?table=chunks_{unique}"]
STORES += ["chroma://{tmp}/chroma", "chroma://{chroma_server.hostport}/c{unique}"]
DIMS = 16


def chunks(doc_id: str, n: int, prefix: str = "text") -> list[Chunk]:
    return [
        Chunk(
            doc_id=doc_id,
            chunk_id=f"{doc_id}-c{i}",
            uri=f"{doc_id}.md",
            offset=i * 10,
            length=10,
            chunk_hash=f"h-{prefix}-{i}",
            text=f"{prefix} {doc_id} {i}",
        )
        for i in range(n)
    ]


def vectors_for(items: list[Chunk]) -> np.ndarray:
    return embed_hash([c.text for c in items], DIMS)


@pytest.fixture(params=STORES, ids=url_id)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return adapter_url(request.param, request, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[VectorStore]:
    instance: VectorStore = registry.create("vector_store", store_url)
    await instance.open(DIMS)
    yield instance
    await instance.close()


async def keys(store: VectorStore) -> list[tuple[str, str, str]]:
    return sorted([(c.doc_id, c.chunk_id, c.chunk_hash) async for c in store.scan()])


async def test_upsert_is_idempotent(store: VectorStore) -> None:
    items = chunks("a", 3)
    await store.upsert(items, vectors_for(items), fresh=True)
    await store.upsert(items, vectors_for(items))
    assert await store.count() == 3
    assert len(await keys(store)) == 3


async def test_upsert_replaces_metadata_of_an_existing_id(store: VectorStore) -> None:
    items = chunks("a", 2)
    await store.upsert(items, vectors_for(items), fresh=True)
    moved = [Chunk(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "offset": 99}) for c in items]
    await store.upsert(moved, vectors_for(moved))
    assert {c.offset async for c in store.scan()} == {99}


async def test_delete_stale_keeps_only_the_given_ids_of_each_document(store: VectorStore) -> None:
    a, b = chunks("a", 4), chunks("b", 2)
    await store.upsert(a + b, vectors_for(a + b), fresh=True)
    await store.delete_stale({"a": {"a-c0", "a-c3"}})
    assert [k[1] for k in await keys(store)] == ["a-c0", "a-c3", "b-c0", "b-c1"]
    await store.delete_stale({"b": set()})
    assert [k[1] for k in await keys(store)] == ["a-c0", "a-c3"]


async def test_a_prefix_search_filters_before_ranking(store: VectorStore) -> None:
    """Optional port: a store that ``SearchesByPrefix`` gives k hits whenever k chunks match,
    however far the nearest chunks are outside the prefix."""
    if not isinstance(store, SearchesByPrefix):
        pytest.skip("this store filters after ranking (ops.search over-fetches for it)")
    near, far = chunks("near", 6), chunks("far/x", 3, prefix="unrelated")
    await store.upsert(near + far, vectors_for(near + far), fresh=True)
    hits = await store.search_prefix(vectors_for([near[0]])[0], 3, "far/")
    assert sorted(c.chunk_id for c, _ in hits) == sorted(c.chunk_id for c in far)
    assert await store.search_prefix(vectors_for([near[0]])[0], 3, "nowhere/") == []


async def test_quotes_in_ids_are_safe(store: VectorStore) -> None:
    items = chunks("it's", 2)
    await store.upsert(items, vectors_for(items), fresh=True)
    await store.delete_stale({"it's": {"it's-c1"}})
    assert [k[1] for k in await keys(store)] == ["it's-c1"]


async def test_search_ranks_the_identical_text_first(store: VectorStore) -> None:
    items = chunks("a", 5) + chunks("b", 5, prefix="other")
    await store.upsert(items, vectors_for(items), fresh=True)
    hits = await store.search(vectors_for([items[7]])[0], k=3)
    assert len(hits) == 3
    assert hits[0][0].chunk_id == items[7].chunk_id
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[0][1] >= hits[1][1] >= hits[2][1]


async def test_reopen_sees_the_data_and_rejects_other_dimensions(store_url: str) -> None:
    first: VectorStore = registry.create("vector_store", store_url)
    await first.open(DIMS)
    items = chunks("a", 2)
    await first.upsert(items, vectors_for(items), fresh=True)
    await first.close()
    again: VectorStore = registry.create("vector_store", store_url)
    await again.open(DIMS)
    assert await again.count() == 2
    await again.close()
    other: VectorStore = registry.create("vector_store", store_url)
    with pytest.raises(ConfigError, match="16-dimensional"):
        await other.open(DIMS * 2)
    await other.close()


async def test_a_closed_store_opens_again_with_its_rows(store_url: str) -> None:
    """Lifecycle: one instance, opened and closed once per run of the pipeline that holds it."""
    instance: VectorStore = registry.create("vector_store", store_url)
    for n in (1, 2, 3):
        await instance.open(DIMS)
        items = chunks(f"d{n}", 2)
        await instance.upsert(items, vectors_for(items), fresh=True)
        assert await instance.count() == 2 * n
        await instance.close()


async def test_update_positions_keeps_vectors_and_inserts_nothing(store: VectorStore) -> None:
    items = chunks("a", 3)
    await store.upsert(items, vectors_for(items), fresh=True)
    before = await store.search(vectors_for([items[1]])[0], k=1)
    moved = [
        Chunk(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "offset": c.offset + 7})
        for c in items[:2]
    ]
    ghost = Chunk(**{**{f: getattr(items[0], f) for f in items[0].__struct_fields__}, "chunk_id": "ghost"})
    await store.update_positions([*moved, ghost])  # the document's third chunk is not asked about
    assert sorted([(c.chunk_id, c.offset) async for c in store.scan()]) == [
        ("a-c0", 7),
        ("a-c1", 17),
        ("a-c2", 20),
    ]
    after = await store.search(vectors_for([items[1]])[0], k=1)
    assert after[0][1] == pytest.approx(before[0][1])
