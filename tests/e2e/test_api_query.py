"""``POST /v1/query`` in-process (TestClient runs the lifespan): the right chunk first, k, the
uri prefix filter, auth, bad bodies, a home without an index, and the embedder opened once for
the server's lifetime. Functional, not timed: latency is measured by ``bench/query.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headwater.compose import build_document_pipeline
from headwater.ops import search
from headwater.ops.index import export
from headwater.server import create_app
from tests.e2e.test_api import AUTH, TOKEN, make_settings


@pytest.fixture
def indexed(corpus: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    asyncio.run(build_document_pipeline(make_settings(home), str(corpus)).run_async())
    return home


@pytest.fixture
def client(indexed: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(indexed))) as c:
        yield c


def chunks(home: Path) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [c async for c in export(make_settings(home))]

    return asyncio.run(collect())


def ask(client: TestClient, **body: Any) -> Any:
    response = client.post("/v1/query", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_exact_text_of_a_chunk_finds_that_chunk_first(client: TestClient, indexed: Path) -> None:
    stored = chunks(indexed)
    assert len(stored) > 6
    for chunk in stored[:: max(1, len(stored) // 5)]:
        answer = ask(client, text=chunk["text"], k=3)
        first = answer["hits"][0]
        assert first["chunk_id"] == chunk["chunk_id"]
        assert first["score"] == pytest.approx(1.0, abs=1e-4)
        assert {key: first[key] for key in ("doc_id", "uri", "offset", "length", "text")} == {
            key: chunk[key] for key in ("doc_id", "uri", "offset", "length", "text")
        }
        assert answer["embedder"].startswith("hash")
        assert answer["took_ms"] >= 0
        scores = [hit["score"] for hit in answer["hits"]]
        assert scores == sorted(scores, reverse=True)


def test_k_is_respected_and_defaults_to_5(client: TestClient, indexed: Path) -> None:
    total = len(chunks(indexed))
    assert len(ask(client, text="how do retries work?")["hits"]) == 5
    for k in (1, 2, 7):
        assert len(ask(client, text="how do retries work?", k=k)["hits"]) == k
    assert len(ask(client, text="how do retries work?", k=total + 50)["hits"]) == total


def test_uri_prefix_filters_before_ranking(client: TestClient, indexed: Path) -> None:
    stored = chunks(indexed)
    guides = [c for c in stored if c["uri"].startswith("guides/")]
    reference_chunk = next(c for c in stored if c["uri"].startswith("reference/"))
    assert 0 < len(guides) < len(stored)
    # the best match overall is in reference/, and is filtered out; k hits still come back
    answer = ask(client, text=reference_chunk["text"], k=len(guides), uri_prefix="guides/")
    assert {h["chunk_id"] for h in answer["hits"]} == {c["chunk_id"] for c in guides}
    one_file = ask(client, text="retries", k=50, uri_prefix="guides/retries")["hits"]
    assert one_file
    assert {h["uri"] for h in one_file} == {"guides/retries.md"}
    # a prefix is text, not a pattern: quotes and LIKE wildcards match themselves only
    for prefix in ("nothing/", "guides/%", "g_ides/", "guides/' OR '1'='1", "*"):
        assert ask(client, text="retries", k=5, uri_prefix=prefix)["hits"] == [], prefix


def test_the_query_route_needs_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.post("/v1/query", json={"text": "retries"}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or wrong bearer token"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": ""},
        {"text": "   \n"},
        {"text": "x" * 9000},
        {"text": 42},
        {"text": "retries", "k": 0},
        {"text": "retries", "k": 501},
        {"text": "retries", "k": "5"},
        {"text": "retries", "k": 2.5},
        {"text": "retries", "uri_prefix": ""},
        {"text": "retries", "uri_prefix": 3},
        {"text": "retries", "filter": {"uri": "guides/"}},
        ["retries"],
    ],
)
def test_bad_bodies_are_422_with_one_detail(client: TestClient, body: Any) -> None:
    response = client.post("/v1/query", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"detail"}
    assert isinstance(response.json()["detail"], str)


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/query", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert set(response.json()) == {"detail"}


def test_a_home_without_an_index_says_so_and_creates_none(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    with TestClient(create_app(make_settings(home))) as client:
        for _ in range(2):
            response = client.post("/v1/query", json={"text": "retries"}, headers=AUTH)
            assert response.status_code == 409
            detail = response.json()["detail"]
            assert "no index" in detail
            assert "\n" not in detail
    assert not (home / "vectors").exists()


def test_the_index_is_opened_once_for_many_queries(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = {"embedders": 0, "stores": 0, "embedder_closed": 0}
    make_embedder, make_vector_store = search.make_embedder, search.make_vector_store

    def counted_embedder(settings: Any) -> Any:
        opened["embedders"] += 1
        embedder = make_embedder(settings)
        close = embedder.close

        async def counted_close() -> None:
            opened["embedder_closed"] += 1
            await close()

        embedder.close = counted_close  # type: ignore[method-assign]
        return embedder

    def counted_store(settings: Any) -> Any:
        opened["stores"] += 1
        return make_vector_store(settings)

    monkeypatch.setattr(search, "make_embedder", counted_embedder)
    monkeypatch.setattr(search, "make_vector_store", counted_store)
    with TestClient(create_app(make_settings(indexed))) as client:
        for i in range(30):
            assert ask(client, text=f"question {i}", k=3)["hits"]
    assert opened == {"embedders": 1, "stores": 1, "embedder_closed": 1}


def test_concurrent_queries_are_answered_correctly(client: TestClient, indexed: Path) -> None:
    stored = chunks(indexed)[:12]

    async def many() -> list[Any]:
        import httpx

        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as http:
            replies = await asyncio.gather(
                *(http.post("/v1/query", json={"text": c["text"], "k": 1}) for c in stored * 3)
            )
        return [r.json()["hits"][0]["chunk_id"] for r in replies]

    assert asyncio.run(many()) == [c["chunk_id"] for c in stored * 3]


def test_a_query_sees_what_a_job_indexed_after_the_server_opened_the_index(
    indexed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "RESIDENT_REFRESH_SECONDS", 0.0)  # no wait for the in-memory copy
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "new.md").write_text("# Zebras\n\nStriped zebras graze on the savanna at dawn.\n")
    with TestClient(create_app(make_settings(indexed))) as client:
        assert ask(client, text="retries", k=1)["hits"]  # the index is open
        job = client.post("/v1/jobs", json={"kind": "docs", "source": str(extra)}, headers=AUTH).json()["id"]
        from tests.e2e.test_api import wait_for

        wait_for(client, job, lambda j: j["status"] == "succeeded")
        new = [c for c in chunks(indexed) if c["uri"] == "new.md"]
        assert new
        hits = ask(client, text=new[0]["text"], k=1, uri_prefix="new")["hits"]
        assert [h["chunk_id"] for h in hits] == [new[0]["chunk_id"]]


def test_a_store_without_a_prefix_filter_is_over_fetched_until_k_match() -> None:
    from headwater.models import Chunk

    class PlainStore:  # ``search`` without ``uri_prefix``: best-first, a/ chunks rank worst
        def __init__(self) -> None:
            self.rows = [
                (Chunk(doc_id=u, chunk_id=f"{u}#{i}", uri=u, offset=0, length=1, chunk_hash="h", text="t"), s)
                for i, (u, s) in enumerate(
                    [(f"b/{n}", 1 - n / 100) for n in range(60)] + [("a/x", 0.1), ("a/y", 0.0)]
                )
            ]
            self.asked: list[int] = []

        async def search(self, vector: Any, k: int) -> list[tuple[Chunk, float]]:
            self.asked.append(k)
            return self.rows[:k]

        async def count(self) -> int:
            return len(self.rows)

    store = PlainStore()
    hits = asyncio.run(search._search(store, None, 2, "a/"))  # type: ignore[arg-type]
    assert [c.uri for c, _ in hits] == ["a/x", "a/y"]
    assert store.asked == [16, 32, 62]
    assert asyncio.run(search._search(store, None, 3, "b/1"))[0][0].uri == "b/1"  # type: ignore[arg-type]


def test_an_embedder_that_is_down_is_503_and_the_next_query_works(
    indexed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headwater.errors import EmbedderUnavailable

    make_embedder = search.make_embedder
    down = {"now": True}

    def flaky(settings: Any) -> Any:
        embedder = make_embedder(settings)
        embed = embedder.embed

        async def maybe_down(texts: Any) -> Any:
            if down["now"]:
                raise EmbedderUnavailable("embedder unavailable: http://127.0.0.1:9/ refused the connection")
            return await embed(texts)

        embedder.embed = maybe_down  # type: ignore[method-assign]
        return embedder

    monkeypatch.setattr(search, "make_embedder", flaky)
    with TestClient(create_app(make_settings(indexed))) as client:
        response = client.post("/v1/query", json={"text": "retries"}, headers=AUTH)
        assert response.status_code == 503
        assert "embedder unavailable" in response.json()["detail"]
        down["now"] = False
        assert ask(client, text="retries")["hits"]


def test_a_secret_in_a_document_is_not_in_the_answer(corpus: Path, tmp_path: Path) -> None:
    key = "sk-" + "Q7x" * 12
    (corpus / "keys.md").write_text(f"# Deploy notes\n\nThe deploy key is {key} and {TOKEN}.\n")
    home = tmp_path / "home"
    asyncio.run(build_document_pipeline(make_settings(home), str(corpus)).run_async())
    with TestClient(create_app(make_settings(home))) as client:
        response = client.post(
            "/v1/query", json={"text": "deploy key", "k": 50, "uri_prefix": "keys"}, headers=AUTH
        )
        assert response.status_code == 200
        assert "Deploy notes" in response.text
        assert key not in response.text
        assert TOKEN not in response.text


def test_the_in_memory_copy_answers_as_the_vector_store_does(indexed: Path) -> None:
    stored = chunks(indexed)

    async def both(text: str, k: int, prefix: str | None) -> tuple[Any, Any]:
        resident, plain = (
            search.Searcher(make_settings(indexed), resident=True),
            search.Searcher(make_settings(indexed)),
        )
        try:
            a = await resident.search(text, k, uri_prefix=prefix)
            b = await plain.search(text, k, uri_prefix=prefix)
            assert resident._resident is not None
            assert resident._resident.matrix is not None  # it did answer from memory
            return a, b
        finally:
            await resident.close()
            await plain.close()

    for text, k, prefix in [
        ("how do retries work?", 5, None),
        (stored[3]["text"], 3, None),
        ("signals and windows", 4, "guides/"),
        ("configuration", len(stored) + 5, "reference/"),
        ("anything", 5, "nowhere/"),
    ]:
        memory, store = asyncio.run(both(text, k, prefix))
        assert [h["chunk_id"] for h in memory] == [h["chunk_id"] for h in store], (text, prefix)
        assert [h["score"] for h in memory] == pytest.approx([h["score"] for h in store], abs=1e-5)
        assert memory == [{**h, "score": m["score"]} for h, m in zip(store, memory, strict=True)]
