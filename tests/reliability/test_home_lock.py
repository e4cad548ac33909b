"""Writers of one embedded home exclude each other (homelock.py).

Two ``ingest docs`` started together (a cron overlap) used to both index everything, leave
duplicate vectors and die in a Lance commit conflict; two jobs of one server did the same. Now
the second writer waits for the first, says who it waits for, or exits 4 with ``--no-wait``; a
killed holder's lock is gone with it; readers keep working during a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from headwater import load_settings
from headwater.compose import build_document_pipeline, build_job_service
from headwater.homelock import home_lock
from headwater.models import JobStatus
from headwater.ops.index import status
from headwater.testing import wait_for_status
from tests.conftest import Cli
from tests.reliability.test_docs_crash import make_corpus

ROUNDS = 4


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    make_corpus(root, 400, seed=21)
    return root


@pytest.fixture(scope="module")
def clean_fingerprint(docs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    settings = load_settings(home=tmp_path_factory.mktemp("clean"), embedder="hash://")
    asyncio.run(build_document_pipeline(settings, str(docs)).run_async())
    return str(asyncio.run(status(settings))["fingerprint"])


def start_ingest(cli: Cli, corpus: Path, home: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "ingest", "docs", str(corpus), "--home", str(home), *extra],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_writers_started_together_take_turns_and_the_index_is_a_clean_runs(
    cli: Cli, docs: Path, tmp_path: Path, clean_fingerprint: str
) -> None:
    waited = 0
    for round_no in range(ROUNDS):
        home = tmp_path / f"home{round_no}"
        runs = [start_ingest(cli, docs, home, "--json") for _ in range(2)]
        # Read both at once: a writer blocked on a full pipe would hold the lock for ever.
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda run: run.communicate(timeout=180), runs))
        for run, (out, err) in zip(runs, results, strict=True):
            assert run.returncode == 0, err
            assert "Traceback" not in out + err
        events = [[json.loads(line) for line in out.splitlines()] for out, _ in results]
        waited += sum(any(e["type"] == "WaitingForHome" for e in run_events) for run_events in events)
        added = sorted(run_events[-1]["documents_added"] for run_events in events)
        assert added == [0, 400], "one run indexed everything, the other found it done"
        assert cli.status(home)["fingerprint"] == clean_fingerprint
        assert cli("verify", "--home", str(home), check=False).returncode == 0
    assert waited >= ROUNDS - 1, "the second writer waited for the first (told so) nearly every time"


async def test_no_wait_exits_4_naming_the_holder_and_readers_keep_working(
    cli: Cli, docs: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    await asyncio.to_thread(cli, "ingest", "docs", str(docs), "--home", str(home))
    async with home_lock(home):  # a writer in this process holds the home
        busy = await asyncio.to_thread(
            cli, "ingest", "docs", str(docs), "--home", str(home), "--no-wait", check=False
        )
        assert busy.returncode == 4, busy.stderr
        assert f"pid {os.getpid()}" in busy.stderr and "Traceback" not in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
        for reader in (["status", "--json"], ["query", "retry", "-k", "2"], ["export"]):
            result = await asyncio.to_thread(cli, *reader, "--home", str(home), check=False)
            assert result.returncode == 0, (reader, result.stderr)

        waiting = start_ingest(cli, docs, home)
        await asyncio.sleep(2)
        assert waiting.poll() is None, "it waits while the home is held"
    _out, err = await asyncio.to_thread(waiting.communicate, timeout=120)
    assert waiting.returncode == 0, err
    assert "waiting:" in err and f"pid {os.getpid()}" in err


def test_a_killed_writers_lock_is_recovered_at_once(
    cli: Cli, docs: Path, tmp_path: Path, clean_fingerprint: str
) -> None:
    home = tmp_path / "home"
    doomed = start_ingest(cli, docs, home, "--json")
    assert doomed.stdout is not None
    while (line := doomed.stdout.readline()) and json.loads(line)["type"] != "DocumentCompleted":
        pass
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    started = time.monotonic()
    cli("ingest", "docs", str(docs), "--home", str(home), "--no-wait")  # exit 0: no stale lock
    assert time.monotonic() - started < 60
    assert cli.status(home)["fingerprint"] == clean_fingerprint
    assert cli("verify", "--home", str(home), check=False).returncode == 0


async def test_two_jobs_of_one_service_on_one_home_take_turns(
    docs: Path, tmp_path: Path, clean_fingerprint: str
) -> None:
    """``serve --max-jobs 2`` with a burst of docs jobs on one home: each job succeeds, one
    writer at a time, and the index is a clean run's (two jobs at once used to fail one with a
    Lance "Incompatible transaction")."""
    settings = load_settings(home=tmp_path / "home", embedder="hash://", max_concurrent_jobs=2)
    service = build_job_service(settings)
    await service.start()
    try:
        ids = await asyncio.gather(*(service.submit("docs", {"source": str(docs)}) for _ in range(8)))
        jobs = [
            await wait_for_status(service, job_id, JobStatus.SUCCEEDED, JobStatus.FAILED, timeout_seconds=180)
            for job_id in ids
        ]
    finally:
        await service.stop()
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(ids), [job.reason for job in jobs]
    assert str((await status(settings))["fingerprint"]) == clean_fingerprint
