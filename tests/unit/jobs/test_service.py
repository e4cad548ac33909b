"""The job state machine and the JobService, with scripted runners (no pipeline, no waiting on disk
work): priorities, the concurrency cap, pause/resume/cancel, failures, crash recovery, following."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from headwater.adapters.sqlite_jobs import SQLiteJobStore
from headwater.errors import InputError, PermanentError
from headwater.events import DocumentCompleted, DocumentFailed, Event, RunCompleted, RunStarted
from headwater.jobs.service import JobService
from headwater.jobs.states import RECOVERY, TERMINAL, TRANSITIONS, IllegalTransition, JobNotFound
from headwater.models import Job, JobStatus

S = JobStatus


# -- the table ----------------------------------------------------------------------------------------
def test_the_table_covers_every_status_and_only_three_are_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED} == TERMINAL


def test_every_status_is_reachable_and_every_live_one_can_end() -> None:
    reach = {S.QUEUED}
    while True:
        more = {n for s in reach for n in TRANSITIONS[s]} - reach
        if not more:
            break
        reach |= more
    assert reach == set(S)
    for status in set(S) - TERMINAL:
        seen, todo = set(), [status]
        while todo:
            seen.add(current := todo.pop())
            todo.extend(TRANSITIONS[current] - seen)
        assert seen & TERMINAL, status


def test_pausing_and_cancelling_wait_for_the_runner() -> None:
    assert S.PAUSED not in TRANSITIONS[S.RUNNING] and S.CANCELLED not in TRANSITIONS[S.RUNNING]
    assert all(TRANSITIONS[s] >= {RECOVERY[s]} for s in RECOVERY)


def test_an_illegal_transition_names_the_job_and_the_moves() -> None:
    error = IllegalTransition("j1", S.SUCCEEDED, S.QUEUED)
    assert str(error) == "job j1: cannot go from succeeded to queued (from succeeded: nothing: it is final)"


# -- the service with scripted runs ---------------------------------------------------------------------
class Script:
    """Runs that emit RunStarted, ``docs`` DocumentCompleted (each waiting for ``gate``) and
    RunCompleted; a spec can ask to fail, or to report an open embedder circuit."""

    def __init__(self, docs: int = 3) -> None:
        self.docs = docs
        self.gate = asyncio.Event()
        self.gate.set()
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0

    def __call__(self, job: Job) -> AsyncIterator[Event]:
        return self.run(job)

    async def run(self, job: Job) -> AsyncIterator[Event]:
        self.started.append(job.spec["source"])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            yield RunStarted(run_id=job.id, kind="documents", source=job.spec["source"])
            for i in range(self.docs):
                await self.gate.wait()
                yield DocumentCompleted(
                    doc_id=f"d{i}",
                    uri=f"{i}.md",
                    outcome="added",
                    chunks=1,
                    chunks_embedded=1,
                    chunks_deleted=0,
                )
                if job.spec.get("circuit"):
                    yield DocumentFailed(
                        doc_id="x",
                        uri="x.md",
                        stage="commit",
                        error_type="CircuitOpenError",
                        message="embedder http://e is unavailable",
                        attempts=1,
                        dlq_id=1,
                    )
            if job.spec.get("fail"):
                raise PermanentError("vector store refused the write")
            yield RunCompleted(documents_seen=self.docs, documents_added=self.docs)
        finally:
            self.running -= 1


@pytest.fixture
async def script() -> Script:
    return Script()


@pytest.fixture
async def service(tmp_path: Path, script: Script) -> AsyncIterator[JobService]:
    svc = JobService(SQLiteJobStore(f"sqlite:///{tmp_path}/jobs.db"), {"docs": script}, poll_seconds=0.02)
    await svc.start()
    yield svc
    await svc.stop()


async def until(service: JobService, job_id: str, *statuses: JobStatus) -> Job:
    for _ in range(500):
        job = await service.get(job_id)
        if job.status in statuses:
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} stayed {job.status}, never reached {statuses}")


async def journal(service: JobService, job_id: str) -> list[dict[str, Any]]:
    return [e.data for e in await service.store.events_after(job_id, 0)]


async def test_a_job_runs_to_success_and_journals_every_event(service: JobService) -> None:
    job_id = await service.submit("docs", {"source": "/a"})
    job = await until(service, job_id, S.SUCCEEDED)
    assert job.runs == 1 and job.progress == {
        "completed": 3,
        "skipped": 0,
        "failed": 0,
        "deleted": 0,
        "total": 3,
    }
    kinds = [(e["type"], e.get("status")) for e in await journal(service, job_id)]
    assert kinds == [("JobStatusChanged", "queued"), ("JobStatusChanged", "running"), ("RunStarted", None),
                     *[("DocumentCompleted", None)] * 3, ("RunCompleted", None),
                     ("JobStatusChanged", "succeeded")]  # fmt: skip


async def test_queued_jobs_run_by_priority_then_age(service: JobService, script: Script) -> None:
    script.gate.clear()
    first = await service.submit("docs", {"source": "/first"})
    await until(service, first, S.RUNNING)
    ids = [await service.submit("docs", {"source": s}, priority=p) for s, p in [("/low", 0), ("/high", 9),
                                                                               ("/low2", 0)]]  # fmt: skip
    script.gate.set()
    for job_id in ids:
        await until(service, job_id, S.SUCCEEDED)
    assert script.started == ["/first", "/high", "/low", "/low2"]


async def test_at_most_n_jobs_run_at_once(tmp_path: Path, script: Script) -> None:
    svc = JobService(SQLiteJobStore(f"sqlite:///{tmp_path}/jobs.db"), {"docs": script}, max_concurrent=2,
                     poll_seconds=0.02)  # fmt: skip
    await svc.start()
    script.gate.clear()
    ids = [await svc.submit("docs", {"source": f"/{i}"}) for i in range(4)]
    await until(svc, ids[1], S.RUNNING)
    await asyncio.sleep(0.1)
    assert [(await svc.get(i)).status for i in ids] == [S.RUNNING, S.RUNNING, S.QUEUED, S.QUEUED]
    script.gate.set()
    for job_id in ids:
        await until(svc, job_id, S.SUCCEEDED)
    await svc.stop()
    assert script.most_running == 2


async def test_pause_stops_the_run_and_resume_runs_it_again(service: JobService, script: Script) -> None:
    script.gate.clear()
    job_id = await service.submit("docs", {"source": "/a"})
    await until(service, job_id, S.RUNNING)
    assert (await service.pause(job_id)).status is S.PAUSING
    job = await until(service, job_id, S.PAUSED)
    assert job.reason == "paused by request" and script.running == 0
    assert (await service.resume(job_id)).status is S.QUEUED
    script.gate.set()
    job = await until(service, job_id, S.SUCCEEDED)
    assert job.runs == 2
    statuses = [e["status"] for e in await journal(service, job_id) if e["type"] == "JobStatusChanged"]
    assert statuses == ["queued", "running", "pausing", "paused", "queued", "running", "succeeded"]


async def test_queued_and_paused_jobs_move_at_once(service: JobService, script: Script) -> None:
    script.gate.clear()
    blocker = await service.submit("docs", {"source": "/blocker"})
    await until(service, blocker, S.RUNNING)
    waiting = await service.submit("docs", {"source": "/waiting"})
    assert (await service.pause(waiting)).status is S.PAUSED
    assert (await service.cancel(waiting)).status is S.CANCELLED
    with pytest.raises(IllegalTransition, match="only a paused job can be resumed; this one is running"):
        await service.resume(blocker)
    with pytest.raises(IllegalTransition, match="from cancelled to pausing"):
        await service.pause(waiting)
    with pytest.raises(JobNotFound):
        await service.pause("nope")


async def test_cancel_stops_a_running_job_for_good(service: JobService, script: Script) -> None:
    script.gate.clear()
    job_id = await service.submit("docs", {"source": "/a"})
    await until(service, job_id, S.RUNNING)
    assert (await service.cancel(job_id, "wrong folder")).status is S.CANCELLING
    job = await until(service, job_id, S.CANCELLED)
    assert job.reason == "wrong folder" and script.running == 0


async def test_a_failing_run_fails_the_job_with_its_reason(service: JobService) -> None:
    job_id = await service.submit("docs", {"source": "/a", "fail": True})
    job = await until(service, job_id, S.FAILED)
    assert job.reason == "PermanentError: vector store refused the write"


async def test_an_open_embedder_circuit_pauses_the_job_with_the_reason(service: JobService) -> None:
    job_id = await service.submit("docs", {"source": "/a", "circuit": True})
    job = await until(service, job_id, S.PAUSED)
    assert job.reason == "embedder unavailable: embedder http://e is unavailable"
    assert job.progress["completed"] == 1 and job.progress["failed"] == 1


async def test_bad_job_specs_are_input_errors(service: JobService) -> None:
    with pytest.raises(InputError, match="unknown job kind 'features'"):
        await service.submit("features", {"source": "/a"})
    with pytest.raises(InputError, match="needs 'source'"):
        await service.submit("docs", {"source": ""})
    with pytest.raises(InputError, match="needs 'source'"):
        await service.submit("signals", {"feature_set": "plant"})
    with pytest.raises(InputError, match="'feature_set' must be"):
        await service.submit("signals", {"source": "/a", "feature_set": 3})


async def test_start_recovers_jobs_a_crashed_server_left(tmp_path: Path, script: Script) -> None:
    store = SQLiteJobStore(f"sqlite:///{tmp_path}/jobs.db")
    await store.open()
    ids = {}
    for status, route in {S.RUNNING: [S.RUNNING], S.PAUSING: [S.RUNNING, S.PAUSING],
                          S.CANCELLING: [S.RUNNING, S.CANCELLING]}.items():  # fmt: skip
        ids[status] = await store.create("docs", {"source": f"/{status}"})
        for step in route:
            await store.transition(ids[status], step)
    await store.close()  # the "server" died here, its runs unsettled

    svc = JobService(SQLiteJobStore(f"sqlite:///{tmp_path}/jobs.db"), {"docs": script}, poll_seconds=0.02)
    await svc.start()
    try:
        rerun = await until(svc, ids[S.RUNNING], S.SUCCEEDED)
        assert rerun.runs == 2
        assert (await svc.get(ids[S.PAUSING])).status is S.PAUSED
        assert (await svc.get(ids[S.CANCELLING])).status is S.CANCELLED
        assert script.started == ["/running"]
    finally:
        await svc.stop()


async def test_stop_puts_running_jobs_back_in_the_queue(tmp_path: Path, script: Script) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    svc = JobService(SQLiteJobStore(url), {"docs": script}, poll_seconds=0.02)
    await svc.start()
    script.gate.clear()
    job_id = await svc.submit("docs", {"source": "/a"})
    await until(svc, job_id, S.RUNNING)
    await svc.stop()
    assert script.running == 0
    store = SQLiteJobStore(url)
    await store.open()
    job = await store.get(job_id)
    await store.close()
    assert job is not None and job.status is S.QUEUED and "server stopped" in (job.reason or "")


async def test_a_pause_written_by_another_process_is_noticed(
    service: JobService, script: Script, tmp_path: Path
) -> None:
    script.gate.clear()
    job_id = await service.submit("docs", {"source": "/a"})
    await until(service, job_id, S.RUNNING)
    cli = JobService(SQLiteJobStore(f"sqlite:///{tmp_path}/jobs.db"), {})  # like `headwater jobs pause`
    await cli.open()
    await cli.pause(job_id)
    await cli.stop()
    await until(service, job_id, S.PAUSED)
    assert script.running == 0


async def test_follow_replays_the_journal_then_streams_until_the_job_ends(
    service: JobService, script: Script
) -> None:
    script.gate.clear()
    job_id = await service.submit("docs", {"source": "/a"})
    await until(service, job_id, S.RUNNING)
    seen: list[int] = []

    async def follow(after: int) -> list[str]:
        types = []
        async for event in service.follow(job_id, after):
            seen.append(event.seq)
            types.append(event.data["type"])
        return types

    follower = asyncio.create_task(follow(0))
    await asyncio.sleep(0.05)
    script.gate.set()
    types = await asyncio.wait_for(follower, 5)
    assert types[-1] == "JobStatusChanged" and types.count("DocumentCompleted") == 3
    assert seen == list(range(1, len(seen) + 1))
    replay = await follow(4)  # a reconnect with Last-Event-ID: 4 gets exactly the rest
    assert len(replay) == len(types) - 4


async def test_the_journal_batches_writes_and_loses_nothing_on_close(tmp_path: Path) -> None:
    from headwater.jobs.service import _Journal

    class SlowStore(SQLiteJobStore):
        writes = 0

        async def append_events(self, job_id: str, events: Any, progress: Any = None) -> int:
            SlowStore.writes += 1
            await asyncio.sleep(0.02)
            return await super().append_events(job_id, events, progress)

    store = SlowStore(f"sqlite:///{tmp_path}/jobs.db")
    await store.open()
    job_id = await store.create("docs", {"source": "/a"})
    j = _Journal(store, job_id, lambda: None)
    j.add(RunStarted(kind="documents", source="/a"))
    await asyncio.sleep(0)  # the first write starts; the next events gather meanwhile
    for i in range(50):
        j.add(DocumentCompleted(doc_id=f"d{i}", uri="u", outcome="added", chunks=1, chunks_embedded=1,
                                chunks_deleted=0))  # fmt: skip
    await j.close()
    events = await store.events_after(job_id, 1)
    job = await store.get(job_id)
    await store.close()
    assert [e.data["type"] for e in events] == ["RunStarted"] + ["DocumentCompleted"] * 50
    assert [e.data["doc_id"] for e in events[1:]] == [f"d{i}" for i in range(50)]
    assert SlowStore.writes == 2 and job is not None and job.progress["completed"] == 50
