"""Document jobs on the real pipeline: a run to success, pause/resume without redoing finished
documents, and a service killed with SIGKILL mid-job whose restart converges to a clean run."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from headwater import load_settings
from headwater.adapters.hashembed import HashEmbedder
from headwater.adapters.sqlite_jobs import SQLiteJobStore
from headwater.compose import build_document_pipeline, build_job_service, job_store_url
from headwater.config import Settings
from headwater.events import Event
from headwater.jobs.service import JobService
from headwater.models import Job, JobStatus, Vectors
from headwater.ops.index import status
from headwater.testing import wait_for_status

ROOT = Path(__file__).resolve().parents[3]
S = JobStatus


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "samples" / "docs", tmp_path / "corpus")
    return tmp_path / "corpus"


def settings(home: Path) -> Settings:
    # one document per commit group, so a pause lands between documents
    return load_settings(home=home, workers=1, commit_batch_chunks=1, progress_interval_seconds=0.05)


class SlowEmbedder(HashEmbedder):
    async def embed(self, texts: Sequence[str]) -> Vectors:
        await asyncio.sleep(0.2)
        return await super().embed(texts)


async def clean_fingerprint(corpus: Path, home: Path) -> str:
    await build_document_pipeline(settings(home), str(corpus)).run_async()
    return str((await status(settings(home)))["fingerprint"])


async def test_a_docs_job_indexes_the_source(corpus: Path, tmp_path: Path) -> None:
    service = build_job_service(settings(tmp_path / "home"))
    await service.start()
    try:
        job_id = await service.submit("docs", {"source": str(corpus)})
        job = await wait_for_status(service, job_id, S.SUCCEEDED, S.FAILED)
    finally:
        await service.stop()
    assert (job.status, job.progress["completed"], job.progress["total"]) == (S.SUCCEEDED, 6, 6)
    assert (tmp_path / "home" / "jobs.db").exists()


async def test_pause_and_resume_skip_finished_documents(corpus: Path, tmp_path: Path) -> None:
    s = settings(tmp_path / "home")

    def runner(job: Job) -> AsyncIterator[Event]:
        return build_document_pipeline(s, job.spec["source"], embedder=SlowEmbedder()).stream_events()

    service = JobService(SQLiteJobStore(job_store_url(s)), {"docs": runner}, poll_seconds=0.05)
    await service.start()
    try:
        job_id = await service.submit("docs", {"source": str(corpus)})
        async for event in service.follow(job_id):
            if event.data["type"] == "DocumentCompleted":
                break
        await service.pause(job_id)
        paused = await wait_for_status(service, job_id, S.PAUSED)
        done_before = paused.progress["completed"]
        assert 1 <= done_before < 6, paused.progress
        await service.resume(job_id)
        job = await wait_for_status(service, job_id, S.SUCCEEDED, S.FAILED)
    finally:
        await service.stop()
    assert job.status is S.SUCCEEDED and job.runs == 2
    assert job.progress["completed"] == 6 - done_before and job.progress["skipped"] >= done_before
    fingerprint = str((await status(s))["fingerprint"])
    assert fingerprint == await clean_fingerprint(corpus, tmp_path / "clean")


SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.unit.pipeline.test_document_jobs import SlowEmbedder, settings
    from headwater.compose import build_document_pipeline
    from headwater.adapters.sqlite_jobs import SQLiteJobStore
    from headwater.compose import job_store_url
    from headwater.jobs.service import JobService

    async def main() -> None:
        s = settings(sys.argv[1])
        def runner(job):
            return build_document_pipeline(s, job.spec["source"], embedder=SlowEmbedder()).stream_events()
        service = JobService(SQLiteJobStore(job_store_url(s)), {"docs": runner})
        await service.start()
        print(await service.submit("docs", {"source": sys.argv[2]}), flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_a_killed_service_resumes_the_job_and_converges(corpus: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(home), str(corpus)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        job_id = (await asyncio.to_thread(proc.stdout.readline)).strip()
        store = SQLiteJobStore(job_store_url(settings(home)))
        await store.open()
        for _ in range(1500):
            job = await store.get(job_id)
            if job is not None and job.progress.get("completed", 0) >= 1:
                break
            await asyncio.sleep(0.02)
        await store.close()
        os.kill(proc.pid, signal.SIGKILL)  # mid-job: nothing settles the job
    finally:
        proc.kill()
        proc.wait()
    assert job is not None and job.status is S.RUNNING and job.progress["completed"] < 6

    service = build_job_service(settings(home))
    await service.start()  # recovers the running job: back to the queue, run again
    try:
        job = await wait_for_status(service, job_id, S.SUCCEEDED, S.FAILED)
    finally:
        await service.stop()
    assert job.status is S.SUCCEEDED and job.runs == 2
    assert str((await status(settings(home)))["fingerprint"]) == await clean_fingerprint(
        corpus, tmp_path / "clean"
    )


async def test_an_embedder_outage_pauses_the_job_and_resume_finishes_it(corpus: Path, tmp_path: Path) -> None:
    from tests.servers.fake_embedder import FakeEmbeddingServer

    server = FakeEmbeddingServer(dimensions=16, plan=["503"] * 1000).start()
    url = f"{server.url}?model=fake&dimensions=16&attempts=1&breaker_failures=2&breaker_cooldown=60"
    s = load_settings(
        home=tmp_path / "home", workers=1, embedder=url, retry_attempts=2, retry_initial_seconds=0.01
    )
    service = build_job_service(s)
    await service.start()
    try:
        job_id = await service.submit("docs", {"source": str(corpus)})
        job = await wait_for_status(service, job_id, S.PAUSED, S.SUCCEEDED, S.FAILED)
        assert job.status is S.PAUSED and job.reason is not None
        assert job.reason.startswith(f"embedder unavailable: embedder {server.url} is unavailable")
        calls = len(server.requests)
        assert calls == 2  # the open circuit spared the server the other documents' retries
        server.plan.clear()  # the embedder is back
        await service.resume(job_id)
        job = await wait_for_status(service, job_id, S.SUCCEEDED, S.FAILED, S.PAUSED)
    finally:
        await service.stop()
        server.stop()
    assert job.status is S.SUCCEEDED and job.progress["completed"] == 6
