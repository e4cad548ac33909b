"""Two ``headwater jobs run`` processes, each on its own home, sharing one PostgreSQL database for
the index (metadata schema, pgvector table) and so for the jobs: every submitted job runs exactly
once, and a runner killed with SIGKILL mid-job has its job finished by the other once its lease
expired, resuming it (finished documents are skipped), into an index equal to a clean run's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import Cli
from tests.servers import ServerProcess


class Runners:
    """The CLI with one index shared by every home: the metadata store's schema (jobs included)
    and a pgvector table, on the test server; short leases so a takeover takes seconds."""

    def __init__(self, cli: Cli, server: ServerProcess, name: str, tmp_path: Path, delay_ms: int) -> None:
        self.cli, self.tmp_path, self.schema = cli, tmp_path, f"r{name}"
        self.admin_url: str = server.url  # type: ignore[attr-defined]
        netloc = server.netloc  # type: ignore[attr-defined]
        self.env = {
            "HEADWATER_METADATA_STORE": f"postgresql://{netloc}/postgres?schema={self.schema}",
            "HEADWATER_VECTOR_STORE": f"pgvector://{netloc}/postgres?table=v{name}",
            "HEADWATER_EMBEDDER": f"hash://?delay_ms={delay_ms}", "HEADWATER_WORKERS": "1",
            "HEADWATER_COMMIT_BATCH_CHUNKS": "1", "HEADWATER_PROGRESS_INTERVAL_SECONDS": "0.05",
            "HEADWATER_JOB_LEASE_SECONDS": "1.5", "HEADWATER_JOB_RENEW_SECONDS": "0.3",
        }  # fmt: skip

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, env=self.env, **kwargs)

    def start(self, home: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{home}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "headwater.cli", "jobs", "run", "--home", str(self.tmp_path / home)],
            stdout=log, stderr=subprocess.STDOUT, env={**self.cli.env, **self.env},
        )  # fmt: skip

    def log(self, home: str) -> str:
        return (self.tmp_path / f"{home}.log").read_text()

    def jobs(self) -> dict[str, dict[str, Any]]:
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            rows = db.execute(
                f'SELECT id, status, runs, progress, reason FROM "{self.schema}".jobs'
            ).fetchall()
        return {
            i: {"status": s, "runs": r, "progress": json.loads(p), "reason": why} for i, s, r, p, why in rows
        }

    def journal(self, job_id: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            rows = db.execute(
                f'SELECT data FROM "{self.schema}".job_events WHERE job_id = %s ORDER BY seq', [job_id]
            ).fetchall()
        return [json.loads(data) for (data,) in rows]

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.jobs()[job_id]
            if predicate(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} stuck: {self.jobs()[job_id]}")


def _finish(runners: Runners, proc: subprocess.Popen[bytes], home: str) -> None:
    try:
        returncode = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert returncode == 0, runners.log(home)


def _statuses(journal: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in journal if e["type"] == "JobStatusChanged"]


def test_two_runners_on_one_database_run_each_job_once(
    cli: Cli, pgvector_server: ServerProcess, tmp_path: Path, unique: str
) -> None:
    runners = Runners(cli, pgvector_server, unique, tmp_path, delay_ms=60)
    sources = []
    for s in range(8):
        folder = tmp_path / f"source{s}"
        folder.mkdir()
        for d in range(3):
            (folder / f"s{s}-doc{d}.md").write_text(
                f"# Source {s} doc {d}\n\nParagraph {s}-{d} about leases.\n"
            )
        sources.append(folder)
    ids = [runners("jobs", "submit", str(f), "--home", str(tmp_path / "a")).stdout.strip() for f in sources]

    procs = {home: runners.start(home) for home in ("a", "b")}
    for home, proc in procs.items():
        _finish(runners, proc, home)

    jobs = runners.jobs()
    for job_id in ids:
        journal = runners.journal(job_id)
        assert (jobs[job_id]["status"], jobs[job_id]["runs"]) == ("succeeded", 1), jobs[job_id]
        assert _statuses(journal) == ["queued", "running", "succeeded"]
        assert [e["type"] for e in journal].count("RunStarted") == 1
        assert jobs[job_id]["progress"]["completed"] == 3
    assert json.loads(runners("status", "--home", str(tmp_path / "b"), "--json").stdout)["documents"] == 24


def test_a_runner_killed_mid_job_has_its_job_taken_over_after_its_lease(
    cli: Cli, pgvector_server: ServerProcess, corpus: Path, tmp_path: Path, unique: str
) -> None:
    for i in range(20):  # 26 documents of one chunk each: a run of ~8 s at 300 ms per embed
        (corpus / f"extra-{i:02}.md").write_text(f"# Extra {i}\n\nParagraph number {i} about leases.\n")
    runners = Runners(cli, pgvector_server, unique, tmp_path, delay_ms=300)
    job_id = runners("jobs", "submit", str(corpus), "--home", str(tmp_path / "a")).stdout.strip()

    first = runners.start("a")
    try:
        runners.wait_for(job_id, lambda j: j["progress"].get("completed", 0) >= 1)
        second = runners.start("b")  # waits for the running job, renewed by the first
        time.sleep(4)  # more than two leases: a renewed one is not taken over
        assert (runners.jobs()[job_id]["status"], runners.jobs()[job_id]["runs"]) == ("running", 1)
        assert second.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = runners.jobs()[job_id]
    assert killed_at["status"] == "running" and killed_at["progress"]["completed"] >= 2
    _finish(runners, second, "b")

    done = runners.jobs()[job_id]
    assert (done["status"], done["runs"]) == ("succeeded", 2), done
    assert done["progress"]["skipped"] >= killed_at["progress"]["completed"]  # resumed, not redone
    statuses = _statuses(runners.journal(job_id))
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    assert "recovered" in next(
        e["reason"]
        for e in runners.journal(job_id)
        if e["type"] == "JobStatusChanged" and e["previous"] == "running"
    )

    clean = tmp_path / "clean"
    cli("ingest", "docs", str(corpus), "--home", str(clean), "--workers", "1")
    assert (
        json.loads(runners("status", "--home", str(tmp_path / "b"), "--json").stdout)["fingerprint"]
        == (cli.status(clean)["fingerprint"])
    )
    assert runners("verify", "--home", str(tmp_path / "b"), check=False).returncode == 0
