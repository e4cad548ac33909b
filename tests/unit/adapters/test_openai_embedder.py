"""The OpenAI-compatible embedder against a real fake server on 127.0.0.1: answers, faults,
retries, validation, the breaker, and one whole pipeline run."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.servers.fake_embedder import FakeEmbeddingServer

from headwater import load_settings, registry
from headwater.adapters.hashembed import embed_hash
from headwater.adapters.openai import OpenAIEmbedder, parse_embeddings
from headwater.compose import build_document_pipeline, make_metadata_store, make_vector_store
from headwater.errors import ConfigError, PermanentError, RetryableError
from headwater.pipeline.ratelimit import BreakerState, CircuitOpenError
from headwater.testing import FakeClock

SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "docs"
SECRET = "sk-canary-7f3a9c1d2e"


@pytest.fixture
def server() -> Iterator[FakeEmbeddingServer]:
    fake = FakeEmbeddingServer(dimensions=16).start()
    yield fake
    fake.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def embedder(server: FakeEmbeddingServer, clock: FakeClock, **options: object) -> OpenAIEmbedder:
    query = "&".join(f"{k}={v}" for k, v in {"model": "fake", "dimensions": 16, **options}.items())
    return OpenAIEmbedder(f"{server.url}?{query}", clock=clock, sleep=clock.sleep)


# -- configuration ---------------------------------------------------------------------------------
def test_openai_url_defaults_to_the_openai_endpoint_and_known_dimensions() -> None:
    e = registry.create("embedder", "openai://text-embedding-3-small")
    assert isinstance(e, OpenAIEmbedder)
    assert (e.endpoint, e.dimensions, e.key_env) == (
        "https://api.openai.com/v1/embeddings",
        1536,
        "OPENAI_API_KEY",
    )
    assert e.id == "openai:text-embedding-3-small:1536" and e.cacheable


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_urls_resolve_to_the_same_adapter(scheme: str) -> None:
    e = registry.create("embedder", f"{scheme}://h:8080/v1/embeddings?model=m&dimensions=8&batch=4")
    assert (e.endpoint, e.model, e.dimensions, e.batch, e.id) == (
        f"{scheme}://h:8080/v1/embeddings",
        "m",
        8,
        4,
        "http:m:8",
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h/v1/embeddings?model=m", "add dimensions=N"),
        ("http://h/v1/embeddings?dimensions=8", "name the model"),
        ("http://h/v1/embeddings?model=m&dimensions=8&dimension=9", "unknown option(s) ['dimension']"),
        ("http://h/v1/embeddings?model=m&dimensions=0", "dimensions must be a positive integer"),
        ("http://h/v1/embeddings?model=m&dimensions=8&timeout=x", "timeout must be a positive number"),
        ("http://h/v1/embeddings?model=m&dimensions=8&preset=turbo", "preset 'turbo'"),
        ("openai://my-own-model", "add dimensions=N"),
    ],
)
def test_bad_urls_are_config_errors_that_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="embedder URL") as info:
        OpenAIEmbedder(url)
    assert problem in str(info.value)


def test_credentials_in_the_url_never_reach_messages() -> None:
    with pytest.raises(ConfigError) as info:
        OpenAIEmbedder(f"http://user:{SECRET}@h:1/v1/embeddings?model=m")
    assert SECRET not in str(info.value) and "http://h:1/v1/embeddings" in str(info.value)


async def test_a_missing_api_key_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await OpenAIEmbedder("openai://text-embedding-3-small").open()


# -- answers -----------------------------------------------------------------------------------------
async def test_vectors_come_back_in_input_order_batched(
    server: FakeEmbeddingServer, clock: FakeClock
) -> None:
    server.plan = ["ok", "reversed", "ok"]
    e = embedder(server, clock, batch=2)
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    vectors = await e.embed(texts)
    await e.close()
    np.testing.assert_allclose(vectors, embed_hash(texts, 16), rtol=1e-6)
    assert [r["input"] for r in server.requests] == [["alpha", "beta"], ["gamma", "delta"], ["epsilon"]]
    assert all(r["model"] == "fake" and "dimensions" not in r for r in server.requests)
    assert "Authorization" not in server.headers[0]


async def test_no_texts_means_no_request(server: FakeEmbeddingServer, clock: FakeClock) -> None:
    assert (await embedder(server, clock).embed([])).shape == (0, 16)
    assert server.requests == []


async def test_openai_urls_send_the_key_and_requested_dimensions(
    server: FakeEmbeddingServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    e = OpenAIEmbedder("openai://text-embedding-3-small?dimensions=16", clock=clock, sleep=clock.sleep)
    e.endpoint = server.url  # OpenAI itself is out of reach: same client, local server
    await e.embed(["x"])
    await e.close()
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert server.requests[0] == {"model": "text-embedding-3-small", "input": ["x"], "dimensions": 16}
    assert SECRET not in repr(vars(e))


# -- throttling and retries -------------------------------------------------------------------------
async def test_429_with_retry_after_pauses_then_succeeds(
    server: FakeEmbeddingServer, clock: FakeClock
) -> None:
    server.plan = ["429:7"]
    e = embedder(server, clock)
    rate = e.limiter.rate
    vectors = await e.embed(["a"])
    await e.close()
    np.testing.assert_allclose(vectors, embed_hash(["a"], 16), rtol=1e-6)
    assert len(server.requests) == 2
    assert clock.now == pytest.approx(7)  # waited exactly the Retry-After, no extra backoff
    assert e.limiter.rate == rate / 2
    assert e.breaker.state is BreakerState.CLOSED  # throttling is not an outage


async def test_5xx_is_retried_with_backoff(server: FakeEmbeddingServer, clock: FakeClock) -> None:
    server.plan = ["500", "503"]
    e = embedder(server, clock)
    await e.embed(["a"])
    await e.close()
    assert len(server.requests) == 3 and clock.slept == [0.5, 1.0]


async def test_persistent_5xx_raises_retryable_naming_the_url_without_secrets(
    server: FakeEmbeddingServer, clock: FakeClock
) -> None:
    server.plan = ["500"] * 3
    e = embedder(server, clock, attempts=3)
    with pytest.raises(RetryableError) as info:
        await e.embed(["a"])
    await e.close()
    message = str(info.value)
    assert f"embedder {server.url}: HTTP 500" in message and "?" not in message
    assert "sk-fake" not in message and "[redacted]" in message
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", ["401", "400"])
async def test_client_errors_are_permanent_and_not_retried(
    server: FakeEmbeddingServer, clock: FakeClock, status: str
) -> None:
    server.plan = [status]
    e = embedder(server, clock)
    with pytest.raises(PermanentError, match=f"HTTP {status}"):
        await e.embed(["a"])
    await e.close()
    assert len(server.requests) == 1


async def test_a_slow_server_times_out_as_retryable(server: FakeEmbeddingServer, clock: FakeClock) -> None:
    server.plan = ["slow:2"]
    e = embedder(server, clock, timeout=0.2, attempts=1)
    with pytest.raises(RetryableError, match=r"no answer within 0.2 s"):
        await e.embed(["a"])
    await e.close()


async def test_a_refused_connection_is_retryable(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = OpenAIEmbedder(
        f"http://127.0.0.1:{port}/v1/embeddings?model=m&dimensions=4&attempts=2",
        clock=clock,
        sleep=clock.sleep,
    )
    with pytest.raises(RetryableError, match="connection failed"):
        await e.embed(["a"])
    await e.close()
    assert e.breaker.failures == 2


# -- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        ("wrong_dim", "embedding 0 has 15 dimensions, expected 16"),
        ("nan", "embedding 1 contains NaN or infinite values"),
        ("inf", "embedding 1 contains NaN or infinite values"),
        ("short", "1 embeddings for 2 inputs"),
        ("garbage", "the answer is not JSON"),
    ],
)
async def test_bad_answers_are_permanent_errors_naming_the_problem(
    server: FakeEmbeddingServer, clock: FakeClock, behaviour: str, problem: str
) -> None:
    server.plan = [behaviour]
    e = embedder(server, clock)
    with pytest.raises(PermanentError) as info:
        await e.embed(["a", "b"])
    await e.close()
    assert problem in str(info.value) and server.url in str(info.value)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "no 'data' list"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, "repeated"),
        ({"data": [{"index": 5, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, "out-of-range"),
        ({"data": [{"index": 0, "embedding": ["x"]}, {"index": 1, "embedding": [1.0]}]}, "not numbers"),
        ({"data": [{"index": 0, "embedding": None}, {"index": 1, "embedding": [1.0]}]}, "has NoneType"),
    ],
)
def test_malformed_payloads_are_refused(body: object, problem: str) -> None:
    with pytest.raises(PermanentError, match=problem):
        parse_embeddings(body, 2, 1, "http://h/v1/embeddings")


# -- circuit breaker ----------------------------------------------------------------------------------
async def test_breaker_opens_on_an_outage_and_closes_after_recovery(
    server: FakeEmbeddingServer, clock: FakeClock
) -> None:
    server.plan = ["503", "503"]
    e = embedder(server, clock, attempts=1, breaker_failures=2, breaker_cooldown=30)
    moves: list[tuple[str, str, str]] = []
    e.watch_state(lambda name, state, detail: moves.append((name, state, detail)))
    with pytest.raises(RetryableError) as first:
        await e.embed(["a"])
    assert not isinstance(first.value, CircuitOpenError)
    with pytest.raises(CircuitOpenError, match="2 consecutive failures"):
        await e.embed(["a"])  # the failure that opens the circuit says so at once
    with pytest.raises(CircuitOpenError, match="pause the job") as info:
        await e.embed(["a"])
    assert len(server.requests) == 2  # the open circuit spared the server
    assert "HTTP 503" in info.value.reason
    clock.now += 30
    await e.embed(["a"])  # the half-open trial succeeds
    await e.close()
    assert e.breaker.state is BreakerState.CLOSED and len(server.requests) == 3
    # Each move reported once (AdapterStateChange), the embedder named as its id:
    assert [(name, state) for name, state, _ in moves] == [(e.id, s) for s in ("open", "half_open", "closed")]
    assert "HTTP 503" in moves[0][2]


# -- a whole pipeline run ------------------------------------------------------------------------------
async def test_a_document_run_indexes_the_fake_servers_vectors(
    server: FakeEmbeddingServer, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLES, corpus)
    server.plan = ["429:0", "500"]  # hiccups the run must absorb
    settings = load_settings(
        home=tmp_path / "home", workers=1, embedder=f"{server.url}?model=fake&dimensions=16"
    )
    final = await build_document_pipeline(settings, str(corpus)).run_async()
    assert (final.documents_added, final.documents_failed) == (6, 0)

    vectors, metadata = make_vector_store(settings), make_metadata_store(settings)
    await metadata.open()
    await vectors.open(16)
    try:
        chunks = [c async for c in vectors.scan()]
        stored = await metadata.get_vectors("http:fake:16", [c.chunk_hash for c in chunks])
        assert len(chunks) == final.chunks_embedded and set(stored) == {c.chunk_hash for c in chunks}
        for chunk in chunks:
            np.testing.assert_allclose(stored[chunk.chunk_hash], embed_hash([chunk.text], 16)[0], rtol=1e-6)
        best, score = (await vectors.search(embed_hash([chunks[0].text], 16), 1))[0]
        assert best.chunk_hash == chunks[0].chunk_hash and score == pytest.approx(1.0, abs=1e-5)
    finally:
        await vectors.close()
        await metadata.close()
