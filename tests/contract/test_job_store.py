"""The JobStore contract (headwater.ports.JobStore), run per adapter: the transition table on
every write, compare-and-set, queue order, and the per-job event journal. Add an adapter's URL
template to ``STORES`` (see tests/contract/urls.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headwater import registry
from headwater.jobs.states import TERMINAL, TRANSITIONS, IllegalTransition, JobNotFound, StaleJobStatus
from headwater.models import JobStatus
from headwater.ports import JobStore
from tests.contract.urls import adapter_url, url_id

S = JobStatus
STORES = ["sqlite:///{tmp}/jobs.db", "postgresql://{pgvector_server.netloc}/postgres?schema=j{unique}"]


@pytest.fixture(params=STORES, ids=url_id)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return adapter_url(request.param, request, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    instance: JobStore = registry.create("job_store", store_url)
    assert isinstance(instance, JobStore)  # every port it owes, the journal's and the queue's
    await instance.open()
    yield instance
    await instance.close()


def path_to(target: JobStatus) -> list[JobStatus]:
    """The shortest sequence of legal moves from queued to ``target``."""
    routes: deque[list[JobStatus]] = deque([[S.QUEUED]])
    while routes:
        route = routes.popleft()
        if route[-1] is target:
            return route[1:]
        routes.extend([*route, nxt] for nxt in sorted(TRANSITIONS[route[-1]]) if nxt not in route)
    raise AssertionError(f"{target} is unreachable from queued")


async def job_in(store: JobStore, status: JobStatus) -> str:
    job_id = await store.create("docs", {"source": "/src"})
    for step in path_to(status):
        await store.transition(job_id, step)
    return job_id


async def test_a_new_job_is_queued_with_its_spec_and_a_first_event(store: JobStore) -> None:
    job_id = await store.create("docs", {"source": "/src", "n": [1, 2]}, priority=3)
    job = await store.get(job_id)
    assert job is not None
    assert (job.kind, job.spec, job.priority, job.status, job.runs, job.progress) == (
        "docs",
        {"source": "/src", "n": [1, 2]},
        3,
        S.QUEUED,
        0,
        {},
    )
    events = await store.events_after(job_id, 0)
    assert [(e.seq, e.data["type"], e.data["status"]) for e in events] == [(1, "JobStatusChanged", "queued")]


@pytest.mark.parametrize(("current", "to"), list(itertools.product(S, S)), ids=str)
async def test_every_move_is_checked_against_the_table(
    store: JobStore, current: JobStatus, to: JobStatus
) -> None:
    job_id = await job_in(store, current)
    before = await store.events_after(job_id, 0)
    if to in TRANSITIONS[current]:
        job = await store.transition(job_id, to, "because")
        assert (job.status, job.reason) == (to, "because")
        last = (await store.events_after(job_id, len(before)))[0].data
        assert (last["previous"], last["status"], last["reason"]) == (current, to, "because")
    else:
        with pytest.raises(IllegalTransition, match=f"job {job_id}: cannot go from {current} to {to}"):
            await store.transition(job_id, to)
        job = await store.get(job_id)
        assert job is not None and job.status is current
        assert len(await store.events_after(job_id, 0)) == len(before)  # nothing written


async def test_compare_and_set_refuses_a_stale_expectation(store: JobStore) -> None:
    job_id = await job_in(store, S.RUNNING)
    with pytest.raises(StaleJobStatus, match="changed meanwhile") as info:
        await store.transition(job_id, S.PAUSED, expected=S.QUEUED)
    assert (info.value.expected, info.value.current) == (S.QUEUED, S.RUNNING)
    job = await store.get(job_id)
    assert job is not None and job.status is S.RUNNING


async def test_two_writers_racing_for_a_job_never_both_win(store: JobStore, store_url: str) -> None:
    other: JobStore = registry.create("job_store", store_url)
    await other.open()
    try:
        for _ in range(5):
            job_id = await store.create("docs", {"source": "/src"})
            results = await asyncio.gather(
                store.transition(job_id, S.RUNNING, expected=S.QUEUED),
                other.transition(job_id, S.CANCELLED, expected=S.QUEUED),
                return_exceptions=True,
            )
            assert sum(isinstance(r, StaleJobStatus) for r in results) == 1, results
    finally:
        await other.close()


async def test_runs_count_every_start(store: JobStore) -> None:
    job_id = await job_in(store, S.RUNNING)
    await store.transition(job_id, S.QUEUED)
    job = await store.transition(job_id, S.RUNNING)
    assert job.runs == 2


async def test_unknown_jobs(store: JobStore) -> None:
    assert await store.get("nope") is None
    with pytest.raises(JobNotFound, match="'nope'"):
        await store.transition("nope", S.RUNNING)
    with pytest.raises(JobNotFound):
        await store.append_events("nope", [{"type": "X"}])


async def test_events_are_numbered_per_job_after_the_status_changes(store: JobStore) -> None:
    a = await store.create("docs", {"source": "/a"})
    b = await store.create("docs", {"source": "/b"})
    assert (
        await store.append_events(a, [{"type": "RunStarted"}, {"type": "BatchProgress"}], {"completed": 1})
        == 3
    )
    await store.transition(a, S.RUNNING)
    assert await store.append_events(a, [{"type": "RunCompleted", "n": 1}]) == 5
    assert await store.append_events(b, [{"type": "RunStarted"}]) == 2
    events = await store.events_after(a, 0)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and events[4].data == {"type": "RunCompleted", "n": 1}
    assert [e.seq for e in await store.events_after(a, 3)] == [4, 5]
    assert [e.seq for e in await store.events_after(a, 1, limit=2)] == [2, 3]
    assert await store.events_after(a, 5) == []
    job = await store.get(a)
    assert job is not None and job.progress == {"completed": 1}


async def test_list_filters_by_status_in_queue_order(store: JobStore) -> None:
    low = await store.create("docs", {"source": "/1"}, priority=0)
    high = await store.create("docs", {"source": "/2"}, priority=5)
    low2 = await store.create("docs", {"source": "/3"}, priority=0)
    running = await job_in(store, S.RUNNING)
    assert [j.id for j in await store.list([S.QUEUED])] == [high, low, low2]
    assert [j.id for j in await store.list([S.RUNNING, S.PAUSED])] == [running]
    assert len(await store.list()) == 4 and len(await store.list(limit=2)) == 2
    assert await store.list([]) == []


async def test_everything_survives_a_reopen(store: JobStore, store_url: str) -> None:
    job_id = await job_in(store, S.PAUSING)
    await store.append_events(job_id, [{"type": "RunStarted"}], {"completed": 2})
    await store.close()
    again: JobStore = registry.create("job_store", store_url)
    await again.open()
    try:
        job = await again.get(job_id)
        assert job is not None and (job.status, job.progress) == (S.PAUSING, {"completed": 2})
        assert [e.data["type"] for e in await again.events_after(job_id, 3)] == ["RunStarted"]
    finally:
        await again.close()
        await store.open()  # the fixture closes it


async def test_only_final_jobs_are_deleted_with_their_journal(store: JobStore) -> None:
    assert await store.counts() == dict.fromkeys(S, 0)
    for status in S:
        job_id = await job_in(store, status)
        if status in TERMINAL:
            await store.delete(job_id)
            assert await store.get(job_id) is None
            assert await store.events_after(job_id, 0) == []
        else:
            with pytest.raises(IllegalTransition, match="only a finished job can be deleted"):
                await store.delete(job_id)
            assert (await store.get(job_id)) is not None
    with pytest.raises(JobNotFound):
        await store.delete("0" * 32)
    assert await store.counts() == {s: 0 if s in TERMINAL else 1 for s in S}
