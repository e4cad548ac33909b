"""The metadata ports' contract (DocumentState, DeadLetters, EmbeddingCache), run per adapter: add
its URL template to ``STORES`` (see tests/contract/urls.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from headwater import registry
from headwater.models import ChunkKey, DeadLetter, DocState
from headwater.ports import MetadataStore
from tests.contract.urls import adapter_url, url_id

STORES = ["sqlite:///{tmp}/state.db", "postgresql://{pgvector_server.netloc}/postgres?schema=t{unique}"]


@pytest.fixture(params=STORES, ids=url_id)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return adapter_url(request.param, request, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[MetadataStore]:
    instance = registry.create("metadata_store", store_url)
    await instance.open()
    yield instance
    await instance.close()


def state(doc_id: str, status: str = "done", content_hash: str = "h1") -> DocState:
    return DocState(
        doc_id=doc_id,
        source="file:///src",
        uri=f"{doc_id}.md",
        content_hash=content_hash,
        size=10,
        mtime_ns=5,
        status=status,
        attempts=0,
        error_count=0,
        version=1,
    )


async def test_the_store_implements_every_metadata_port(store: MetadataStore) -> None:
    assert isinstance(store, MetadataStore)


async def test_a_closed_store_opens_again_with_its_data(store_url: str) -> None:
    """Lifecycle: one instance, opened and closed once per run of the pipeline that holds it."""
    instance: MetadataStore = registry.create("metadata_store", store_url)
    for attempt in (1, 2, 3):
        await instance.open()
        assert (await instance.claim([("d1", "file:///src", "d1.md")]))["d1"] == attempt
        await instance.close()


async def test_claim_counts_attempts_until_finished(store: MetadataStore) -> None:
    s = store
    assert await s.claim([("d1", "file:///src", "d1.md")]) == {"d1": 1}
    assert await s.claim([("d1", "file:///src", "d1.md")]) == {"d1": 2}
    docs = await s.get_documents(["d1", "missing"])
    assert set(docs) == {"d1"} and docs["d1"].status == "pending" and docs["d1"].content_hash is None
    await s.finish(["d1"])
    done = (await s.get_documents(["d1"]))["d1"]
    assert (done.status, done.attempts) == ("done", 0)


async def test_commit_replaces_a_documents_chunk_keys(store: MetadataStore) -> None:
    s = store
    keys = [ChunkKey(doc_id="d1", chunk_id=f"c{i}", chunk_hash=f"h{i}") for i in range(3)]
    await s.commit([state("d1")], {"d1": keys})
    await s.commit([state("d1", content_hash="h2")], {"d1": keys[1:]})
    got = await s.get_chunks(["d1"])
    assert [k.chunk_id for k in got["d1"]] == ["c1", "c2"]
    assert [k.chunk_id async for k in s.chunk_keys()] == ["c1", "c2"]
    assert (await s.get_documents(["d1"]))["d1"].content_hash == "h2"


async def test_unseen_lists_only_unlisted_documents_of_that_source(store: MetadataStore) -> None:
    s = store
    other = DocState(
        **{**{f: getattr(state("x"), f) for f in DocState.__struct_fields__}, "source": "file:///other"}
    )
    await s.commit([state("a"), state("b"), state("c"), other], {})
    await s.note_seen(["a.md", "c.md"])
    assert [d.doc_id for d in await s.unseen("file:///src", 10)] == ["b"]
    await s.forget(["b"])
    assert await s.unseen("file:///src", 10) == []
    counts = await s.counts()
    assert counts["documents"] == 3


async def test_dead_letters_round_trip_and_replay(store: MetadataStore) -> None:
    s = store
    letter = DeadLetter(
        id=0,
        kind="document",
        input_ref="bad.pdf",
        source="file:///src",
        stage="extract",
        error_type="InputError",
        message="bad.pdf: not a PDF",
        traceback="Traceback ...",
        attempts=1,
        created_at="",
    )
    first = await s.add(letter)
    second = await s.add(letter)
    assert second > first
    got = await s.get(first)
    assert got.message == "bad.pdf: not a PDF" and got.created_at and got.replayed_at is None
    await s.mark_replayed([first])
    assert [lt.id for lt in await s.list()] == [second]
    assert len(await s.list(include_replayed=True)) == 2
    assert await s.get(999) is None


async def test_dead_letters_are_stored_without_secrets_but_payloads_verbatim(store: MetadataStore) -> None:
    """Secrets go; e-mails and phone numbers in messages stay (PII scrubbing is for content)."""
    body = b'{"owner": "jane.roe@example.com"}'
    letter = DeadLetter(
        id=0,
        kind="message",
        input_ref="t@1",
        source="redis://:hunter22@host/0",
        stage="sink",
        error_type="RetryableError",
        attempts=3,
        created_at="",
        payload=body,
        message="POST failed for jane.roe@example.com (Authorization: Bearer sk-abcdef123456)",
        traceback="Traceback: url=redis://:hunter22@host/0 phone +1 415 555 0100",
    )
    got = await store.get(await store.add(letter))
    stored = f"{got.message} {got.traceback} {got.source}"
    for secret in ("sk-abcdef123456", "hunter22"):
        assert secret not in stored
    assert got.message == "POST failed for jane.roe@example.com (Authorization: *** ***)"
    assert got.traceback == "Traceback: url=redis://***@host/0 phone +1 415 555 0100"
    assert got.payload == body


async def test_embedding_cache_is_keyed_by_embedder_and_hash(store: MetadataStore) -> None:
    s = store
    vec = np.arange(4, dtype=np.float32)
    await s.put_vectors("emb-a", {"h1": vec})
    assert set(await s.get_vectors("emb-a", ["h1", "h2"])) == {"h1"}
    assert await s.get_vectors("emb-b", ["h1"]) == {}
    np.testing.assert_array_equal((await s.get_vectors("emb-a", ["h1"]))["h1"], vec)


async def test_chunk_keys_lists_every_key_once_across_pages(store: MetadataStore) -> None:
    """More keys than one page of the listing (5,000), spread over documents whose ids sort
    differently from their chunk ids."""
    docs = [state(f"d{i:03d}") for i in range(130)]
    chunks = {
        d.doc_id: [
            ChunkKey(doc_id=d.doc_id, chunk_id=f"{99 - j:02d}-{d.doc_id}", chunk_hash="h") for j in range(50)
        ]
        for d in docs
    }
    await store.commit(docs, chunks)
    listed = [(k.doc_id, k.chunk_id) async for k in store.chunk_keys()]
    assert len(listed) == 6500
    assert sorted(listed) == sorted((k.doc_id, k.chunk_id) for keys in chunks.values() for k in keys)


async def test_versions_are_recorded_size_mtime_and_status_per_uri_of_that_source(
    store: MetadataStore,
) -> None:
    await store.commit([state("a"), state("b", status="failed")], {})
    await store.claim([("c", "file:///src", "c.md")])
    assert await store.versions("file:///src", ["a.md", "b.md", "c.md", "missing.md"]) == {
        "a.md": (10, 5, "done", "a"),
        "b.md": (10, 5, "failed", "b"),
        "c.md": (0, 0, "pending", "c"),
    }
    assert await store.versions("file:///other", ["a.md"]) == {}


async def test_touch_records_size_and_mtime_and_nothing_else(store: MetadataStore) -> None:
    keys = [ChunkKey(doc_id="a", chunk_id="c1", chunk_hash="h1")]
    await store.commit([state("a"), state("b")], {"a": keys})
    moved = DocState(**{**{f: getattr(state("a"), f) for f in DocState.__struct_fields__}, "mtime_ns": 99})
    await store.touch([moved])
    assert await store.versions("file:///src", ["a.md", "b.md"]) == {
        "a.md": (10, 99, "done", "a"),
        "b.md": (10, 5, "done", "b"),
    }
    after = (await store.get_documents(["a"]))["a"]
    assert (after.content_hash, after.version, after.status) == ("h1", 1, "done")
    assert [k.chunk_id for k in (await store.get_chunks(["a"]))["a"]] == ["c1"]
