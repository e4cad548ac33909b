"""A remote embedder that throttles, fails, stalls and then goes away (issue #5, seed 004).

Against the fake OpenAI-compatible server on 127.0.0.1: a run through 429s with Retry-After,
5xx and slow answers loses no document and ends with the index of a run against a healthy
server, while the rate limiter slows down and the queue it watches stays within its bound. Then
the server dies mid-job: the breaker opens, the job pauses with the embedder as its reason, and
once the server is back a resume finishes it with the same index as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater import load_settings
from headwater.compose import build_document_pipeline, build_job_service
from headwater.config import Settings
from headwater.errors import EmbedderUnavailable
from headwater.events import AdapterStateChange, BatchProgress, DocumentFailed, RunCompleted
from headwater.models import JobEvent, JobStatus
from headwater.ops.index import status
from headwater.testing import wait_for_status
from tests.conftest import Cli
from tests.servers.fake_embedder import FakeEmbeddingServer

S = JobStatus
DOCS = 50
WORDS = "retry backoff vector chunk window signal embed index store crash replay watermark".split()  # noqa: SIM905
FAULTS = ["429:0.3", "ok", "503", "slow:0.3", "500", "ok", "slow:1.5", "429", "ok", "500", "slow:0.2"]
"""Throttled (with and without Retry-After), failing, slow and timed-out answers (timeout=1)."""


def options(**extra: object) -> str:
    base = {"model": "fake", "dimensions": 16, "batch": 8, "timeout": 1, "attempts": 3, **extra}
    return "&".join(f"{k}={v}" for k, v in base.items())


def settings_for(home: Path, url: str, **extra: object) -> Settings:
    """Small chunks, batches and groups: ~150 chunks need dozens of requests and groups."""
    return load_settings(
        **extra,
        home=home,
        embedder=url,
        workers=1,
        chunk_size_chars=200,
        chunk_overlap_chars=0,
        embed_batch_size=8,
        commit_batch_chunks=16,
        retry_attempts=4,
        retry_initial_seconds=0.01,
        progress_interval_seconds=0.05,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(5)
    for i in range(DOCS):
        paragraphs = [" ".join(rng.choices(WORDS, k=25)) + f" doc {i} part {p}." for p in range(3)]
        (root / f"doc{i:02d}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(paragraphs) + "\n")
    return root


@pytest.fixture(scope="module")
def clean_fingerprint(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The index a run against a healthy server builds."""
    server = FakeEmbeddingServer(dimensions=16).start()
    try:
        s = settings_for(tmp_path_factory.mktemp("clean"), f"{server.url}?{options()}")
        final = asyncio.run(build_document_pipeline(s, str(corpus)).run_async())
        assert (final.documents_added, final.documents_failed) == (DOCS, 0)
        return str(asyncio.run(status(s))["fingerprint"])
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[FakeEmbeddingServer]:
    fake = FakeEmbeddingServer(dimensions=16).start()
    yield fake
    fake.stop()


async def test_throttling_faults_and_stalls_lose_nothing_and_slow_the_limiter(
    corpus: Path, tmp_path: Path, clean_fingerprint: str, server: FakeEmbeddingServer
) -> None:
    server.plan = list(FAULTS)
    # high-throughput's limiter (50/s, floor 1/s) recovers from five halvings within the test's
    # time; its other sizes differ from the clean run's, which must not change the index either.
    s = settings_for(tmp_path / "home", f"{server.url}?{options()}", preset="high-throughput")
    pipeline = build_document_pipeline(s, str(corpus))
    observed: list[tuple[int, int]] = []
    observe = pipeline.embedder.observe_queue  # type: ignore[attr-defined]  # the HTTP embedder's

    def recording(depth: int, capacity: int) -> float:
        observed.append((depth, capacity))
        return float(observe(depth, capacity))

    setattr(pipeline.embedder, "observe_queue", recording)  # noqa: B010 (instrument one instance)
    events = [event async for event in pipeline.stream_events()]

    final = events[-1]
    assert isinstance(final, RunCompleted)
    assert (final.documents_added, final.documents_failed) == (DOCS, 0)
    assert not [e for e in events if isinstance(e, DocumentFailed)]
    assert not server.plan, "every fault was served"
    assert str((await status(s))["fingerprint"]) == clean_fingerprint

    assert observed, "the pipeline reports its queue to the limiter"
    assert all(0 <= depth <= capacity for depth, capacity in observed)
    rates = [e.embed_rate_per_second for e in events if isinstance(e, BatchProgress)]
    assert rates and all(rate is not None for rate in rates)
    start = pipeline.embedder.limiter.config.rate_per_second  # type: ignore[attr-defined]
    assert min(r for r in rates if r is not None) < start, "429s and 503s slowed the limiter down"


async def first_completed(events: AsyncIterator[JobEvent]) -> None:
    async for event in events:
        if event.data["type"] == "DocumentCompleted":
            return


async def test_a_dead_server_pauses_the_job_and_resume_converges(
    corpus: Path, tmp_path: Path, clean_fingerprint: str
) -> None:
    server = FakeEmbeddingServer(dimensions=16, plan=["slow:0.05"] * 1000).start()
    port = server.port
    url = f"{server.url}?{options(attempts=1, breaker_failures=2, breaker_cooldown=0.5)}"
    s = settings_for(tmp_path / "home", url)
    service = build_job_service(s)
    await service.start()
    try:
        job_id = await service.submit("docs", {"source": str(corpus)})
        await asyncio.wait_for(first_completed(service.follow(job_id)), 30)
        server.stop()  # mid-job: connections are refused from now on
        job = await wait_for_status(service, job_id, S.PAUSED, S.SUCCEEDED, S.FAILED, timeout_seconds=30)
        assert job.status is S.PAUSED, (job.status, job.reason)
        assert job.reason is not None and job.reason.startswith("embedder unavailable:")
        assert "connection failed" in job.reason
        done_before = job.progress["completed"]
        assert 1 <= done_before < DOCS, job.progress

        server = FakeEmbeddingServer(dimensions=16, port=port).start()  # the embedder is back
        await service.resume(job_id)
        job = await wait_for_status(service, job_id, S.SUCCEEDED, S.FAILED, S.PAUSED, timeout_seconds=30)
    finally:
        await service.stop()
        server.stop()
    assert job.status is S.SUCCEEDED and job.runs == 2, (job.status, job.reason)
    assert job.progress["skipped"] >= done_before  # finished documents were not redone
    assert str((await status(s))["fingerprint"]) == clean_fingerprint


async def test_the_breaker_opening_is_an_event_before_the_error(corpus: Path, tmp_path: Path) -> None:
    """Python API: the run reports the embedder's breaker opening (AdapterStateChange) among its
    events, then stops with EmbedderUnavailable."""
    server = FakeEmbeddingServer(dimensions=16, plan=["503"] * 10_000).start()
    url = f"{server.url}?{options(attempts=1, breaker_failures=2, breaker_cooldown=30)}"
    seen: list[object] = []
    try:
        pipeline = build_document_pipeline(settings_for(tmp_path / "home", url), str(corpus))
        with pytest.raises(EmbedderUnavailable):
            async for event in pipeline.stream_events():
                seen.append(event)  # noqa: PERF401 - one by one: the run ends in an error
    finally:
        server.stop()
    changes = [e for e in seen if isinstance(e, AdapterStateChange)]
    assert [(c.adapter, c.state) for c in changes] == [("embedder", "open")], changes
    assert changes[0].name == "http:fake:16" and "503" in changes[0].detail


def test_a_cli_run_against_a_dead_embedder_stops_with_exit_5_and_dead_letters_nothing(
    corpus: Path, tmp_path: Path, clean_fingerprint: str, cli: Cli
) -> None:
    """A CLI run does what a job does: the breaker opens, the run stops with its own exit code
    and one line, no document is dead-lettered for the outage, and the same command finishes
    the index once the server is back (it used to dead-letter the whole corpus and exit 0)."""
    server = FakeEmbeddingServer(dimensions=16, plan=["503"] * 10_000).start()
    port = server.port
    home = tmp_path / "home"
    url = f"{server.url}?{options(attempts=1, breaker_failures=2, breaker_cooldown=30)}"
    env = {"HEADWATER_CHUNK_SIZE_CHARS": "200", "HEADWATER_CHUNK_OVERLAP_CHARS": "0"}
    env["HEADWATER_WORKERS"] = "1"
    args = ("ingest", "docs", str(corpus), "--home", str(home), "--embedder", url)

    def state() -> dict[str, Any]:  # (a home does not remember its embedder yet: issue #14)
        answer = cli("status", "--home", str(home), "--embedder", url, "--json")
        data: dict[str, Any] = json.loads(answer.stdout)
        return data

    try:
        down = cli(*args, check=False, env=env, timeout=120)
    finally:
        server.stop()
    assert down.returncode == 5, down.stderr
    assert "Traceback" not in down.stdout + down.stderr
    last = down.stderr.strip().splitlines()[-1]
    assert last.startswith("embedder unavailable:") and "run the same command again" in last
    assert state()["dlq"] == 0
    assert json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout) == []

    again = cli(*args, check=False, env=env, timeout=60)  # still down: still nothing dead-lettered
    assert again.returncode == 5 and state()["dlq"] == 0

    server = FakeEmbeddingServer(dimensions=16, port=port).start()  # back
    try:
        final = json.loads(cli(*args, "--json", env=env, timeout=120).stdout.splitlines()[-1])
    finally:
        server.stop()
    assert (final["documents_added"], final["documents_failed"]) == (DOCS, 0)
    assert state()["fingerprint"] == clean_fingerprint
