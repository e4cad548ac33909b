"""What is particular to Chroma (the shared behaviour is tests/contract/test_vector_store.py): its
URLs, spans that are None (Chroma has no null metadata), no embedding function of its own, and
a server that is down or refuses the collection name."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.contract.test_vector_store import DIMS, chunks, vectors_for
from tests.servers import free_port

from headwater.adapters.chroma import ChromaVectorStore
from headwater.errors import ConfigError, StoreUnavailable
from headwater.models import Chunk


@pytest.mark.parametrize("url", ["chroma:relative/path", "chroma://host-without-port/c", "chroma://h:1/a/b"])
def test_a_malformed_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="must look like chroma://"):
        ChromaVectorStore(url)


async def test_missing_spans_read_back_as_none_and_present_ones_as_given(tmp_path: Path) -> None:
    store = ChromaVectorStore(f"chroma://{tmp_path}/db")
    await store.open(DIMS)
    try:
        plain = chunks("a", 1)[0]
        cited = Chunk(**{**{f: getattr(plain, f) for f in plain.__struct_fields__}, "chunk_id": "pdf-c0"})
        cited = Chunk(
            **{
                **{f: getattr(cited, f) for f in cited.__struct_fields__},
                "source_start": 0,
                "page": 3,
                "page_end": 4,
            }
        )
        await store.upsert([plain, cited], vectors_for([plain, cited]), fresh=True)
        got = {c.chunk_id: c async for c in store.scan()}
        assert got[plain.chunk_id] == plain
        assert (got["pdf-c0"].source_start, got["pdf-c0"].source_end, got["pdf-c0"].page) == (0, None, 3)
        assert got["pdf-c0"].page_end == 4
    finally:
        await store.close()


async def test_the_collection_has_no_embedding_function_of_its_own(tmp_path: Path) -> None:
    """Chroma's default embedding function downloads a model: headwater's collection has none."""
    store = ChromaVectorStore(f"chroma://{tmp_path}/db")
    await store.open(DIMS)
    try:
        assert store._collection.configuration.get("embedding_function") is None
        assert store._collection.configuration["hnsw"]["space"] == "cosine"
    finally:
        await store.close()


async def test_a_server_that_does_not_answer_is_unavailable() -> None:
    store = ChromaVectorStore(f"chroma://127.0.0.1:{free_port()}/chunks")
    with pytest.raises(StoreUnavailable, match=r"cannot open the vector store chroma://127\.0\.0\.1"):
        await store.open(DIMS)
    await store.close()


async def test_a_collection_name_the_server_refuses_is_a_configuration_error(chroma_server: object) -> None:
    store = ChromaVectorStore(f"chroma://{chroma_server.hostport}/x")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="cannot open the vector store"):
        await store.open(DIMS)
    await store.close()
