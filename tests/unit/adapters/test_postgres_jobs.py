"""What is particular to the PostgreSQL job store (the shared behaviour is
tests/contract/test_job_store.py): runners on one database claim jobs with leases. Two stores
claiming at once never get the same job; an expired lease is taken over, a renewed one is not;
a lost connection is StoreUnavailable; the default job store follows a postgresql:// metadata store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from tests.servers import ServerProcess

from headwater import registry
from headwater.adapters.postgres.jobs import PostgresJobStore
from headwater.config import Settings
from headwater.errors import StoreUnavailable
from headwater.models import JobStatus

S = JobStatus


def _url(server: ServerProcess, schema: str) -> str:
    return f"postgresql://{server.netloc}/postgres?schema={schema}"  # type: ignore[attr-defined]


@pytest.fixture
async def stores(pgvector_server: ServerProcess, unique: str) -> AsyncIterator[tuple[PostgresJobStore, ...]]:
    """Two stores on one schema: two runners' views of one queue."""
    url = _url(pgvector_server, f"q{unique}")
    pair = (PostgresJobStore(url), PostgresJobStore(url))
    await asyncio.gather(*(s.open() for s in pair))
    yield pair
    await asyncio.gather(*(s.close() for s in pair))


def test_registered_for_both_schemes_and_chosen_after_the_metadata_store(tmp_path: Path) -> None:
    for scheme in ("postgresql", "postgres"):
        assert isinstance(registry.create("job_store", f"{scheme}://me@h/db?schema=s"), PostgresJobStore)
    url = "postgresql://me@h:5432/db?schema=index_a"
    assert Settings(home=tmp_path, metadata_store=url).job_store_url == url
    assert Settings(home=tmp_path).job_store_url == f"sqlite:///{tmp_path.resolve()}/jobs.db"
    own = "postgresql://me@h:5432/db?schema=jobs"
    assert Settings(home=tmp_path, metadata_store=url, job_store=own).job_store_url == own


async def test_two_stores_claiming_at_once_never_get_the_same_job(
    stores: tuple[PostgresJobStore, ...],
) -> None:
    a, b = stores
    created = [await a.create("docs", {"source": f"/{i}"}, priority=i % 3) for i in range(30)]
    claims = await asyncio.gather(*(s.claim(f"runner-{s is a}", 30) for _ in range(20) for s in (a, b)))
    claimed = [job.id for job in claims if job is not None]
    assert sorted(claimed) == sorted(created) and len(set(claimed)) == 30  # each once, none lost
    assert all(job.status is S.RUNNING and job.runs == 1 for job in claims if job is not None)
    assert await a.claim("runner-x", 30) is None
    assert (await b.counts())[S.RUNNING] == 30
    # queue order: of jobs claimed one at a time, the highest priority, then the oldest, first
    first = await a.create("docs", {"source": "/low"})
    high = await a.create("docs", {"source": "/high"}, priority=5)
    assert [(await b.claim("r", 30)), (await b.claim("r", 30))] == [await b.get(high), await b.get(first)]


async def test_an_expired_lease_is_taken_over_and_a_renewed_one_is_not(
    stores: tuple[PostgresJobStore, ...],
) -> None:
    a, b = stores
    dead, alive = await a.create("docs", {"source": "/dead"}), await a.create("docs", {"source": "/alive"})
    assert (await a.claim("runner-a", 0.6)).id == dead  # type: ignore[union-attr]
    assert (await a.claim("runner-a", 0.6)).id == alive  # type: ignore[union-attr]
    assert await b.recover("taken over") == []  # both leases still hold
    for _ in range(4):  # runner-a renews ``alive`` only, as a runner does while a job runs
        await asyncio.sleep(0.3)
        assert await a.renew(alive, "runner-a", 0.6)
    assert not await b.renew(alive, "runner-b", 0.6)  # a lease is renewed by its holder only
    recovered = await b.recover("taken over")
    assert [(job.id, job.status) for job in recovered] == [(dead, S.RUNNING)]
    job = await b.get(dead)
    assert job is not None and (job.status, job.reason) == (S.QUEUED, "taken over")
    assert not await a.renew(dead, "runner-a", 30)  # its first runner lost it: it must stop
    again = await b.claim("runner-b", 30)
    assert again is not None and (again.id, again.runs) == (dead, 2)  # run again: resumed
    events = await b.events_after(dead, 0)
    assert [(e.data["previous"], e.data["status"]) for e in events] == [
        (None, "queued"), ("queued", "running"), ("running", "queued"), ("queued", "running")
    ]  # fmt: skip
    assert (await a.get(alive)).status is S.RUNNING  # type: ignore[union-attr]


async def test_recovery_follows_the_status_a_dead_runner_left(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    pausing, cancelling = await a.create("docs", {"source": "/p"}), await a.create("docs", {"source": "/c"})
    for job_id, to in ((pausing, S.PAUSING), (cancelling, S.CANCELLING)):
        assert (await a.claim("runner-a", 0.2)) is not None
        await b.transition(job_id, to, "asked", expected=S.RUNNING)  # keeps the lease
    assert await a.renew(pausing, "runner-a", 0.2)
    await asyncio.sleep(0.3)
    assert {job.id for job in await b.recover("gone")} == {pausing, cancelling}
    assert (await a.get(pausing)).status is S.PAUSED  # type: ignore[union-attr]
    assert (await a.get(cancelling)).status is S.CANCELLED  # type: ignore[union-attr]


async def test_settling_a_job_ends_its_lease(stores: tuple[PostgresJobStore, ...]) -> None:
    a, _ = stores
    job_id = await a.create("docs", {"source": "/a"})
    await a.claim("runner-a", 30)
    await a.transition(job_id, S.SUCCEEDED, expected=S.RUNNING)
    assert not await a.renew(job_id, "runner-a", 30)


async def test_a_lost_connection_is_store_unavailable(
    stores: tuple[PostgresJobStore, ...], pgvector_server: ServerProcess
) -> None:
    """The connection dies under a status write (killed while it waits for the job's row)."""
    a, _ = stores
    job_id = await a.create("docs", {"source": "/a"})
    url = pgvector_server.url  # type: ignore[attr-defined]
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as admin:
        holder.execute(f'SELECT 1 FROM "{a.schema}".jobs WHERE id = %s FOR UPDATE', [job_id])
        write = asyncio.create_task(a.transition(job_id, S.CANCELLED))
        blocked: list[tuple[int]] = []
        while not blocked:
            await asyncio.sleep(0.02)
            blocked = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                [holder.info.backend_pid],
            ).fetchall()
        admin.execute("SELECT pg_terminate_backend(%s)", [blocked[0][0]])
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await write
        holder.rollback()
    job = await a.get(job_id)  # the pool replaced the dead connection; nothing was written
    assert job is not None and job.status is S.QUEUED
