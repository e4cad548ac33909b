"""``headwater serve`` as a user runs it: a job paused and resumed from the ``jobs`` CLI while the
server runs it, then the server killed with SIGKILL mid-job and restarted → the job resumes by
itself, does not redo finished documents, and the index equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Cli
from tests.servers.processes import free_port

TOKEN = "hw-serve-canary-77aa"  # a canary: must never appear in the server's log
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Server:
    def __init__(self, home: Path, log: Path) -> None:
        self.home, self.log, self.port = home, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        self.env.update(
            PYTHONPATH=str(ROOT / "src"), HEADWATER_API_TOKEN=TOKEN, HEADWATER_WORKERS="1",
            HEADWATER_EMBEDDER="hash://?delay_ms=120", HEADWATER_COMMIT_BATCH_CHUNKS="1",
            HEADWATER_PROGRESS_INTERVAL_SECONDS="0.05", HEADWATER_LOG_FORMAT="json",
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "headwater.cli", "serve", "--home", str(self.home),
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.home.parent,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/livez", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
        return data

    def wait(self, job_id: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(0.03)
        raise AssertionError(f"job {job_id} stuck: {job}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "home", tmp_path / "server.log")
    yield srv
    srv.stop()


def test_jobs_cli_pause_then_sigkill_and_restart_converges(
    server: Server, cli: Cli, corpus: Path, tmp_path: Path
) -> None:
    for i in range(14):  # 20 documents of one chunk each: a run of a few seconds at 120 ms per embed
        (corpus / f"extra-{i:02}.md").write_text(f"# Extra {i}\n\nParagraph number {i} about retries.\n")
    server.start()
    # a path relative to the server's working folder, the one folder jobs may read by default
    job_id = httpx.post(f"{server.url}/v1/jobs", json={"source": "corpus"}, headers=AUTH).json()["id"]
    server.wait(job_id, lambda j: j["progress"].get("completed", 0) >= 2)

    home = ["--home", str(server.home)]
    assert cli("jobs", "pause", job_id, *home).returncode == 0
    paused = server.wait(job_id, lambda j: j["status"] == "paused")
    listed = cli.json_lines("jobs", "list", *home, "--json")
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "paused")]
    cli("jobs", "resume", job_id, *home)
    server.wait(job_id, lambda j: j["status"] == "running" and j["runs"] == 2)
    server.wait(job_id, lambda j: j["progress"].get("completed", 0) >= 2)

    server.kill()
    assert cli("jobs", "status", job_id, *home, "--json").stdout.count('"running"') == 1
    server.start()  # recovery puts the job back in the queue; the dispatcher runs it again
    done = server.wait(job_id, lambda j: j["status"] in ("succeeded", "failed"))
    assert (done["status"], done["runs"]) == ("succeeded", 3)
    assert done["progress"]["skipped"] >= paused["progress"]["completed"] + 2  # not redone

    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", headers=AUTH, timeout=30) as r:
        ids = [int(line[3:]) for line in r.iter_lines() if line.startswith("id:")]
    assert ids == list(range(1, len(ids) + 1))

    clean = tmp_path / "clean"
    cli("ingest", "docs", str(corpus), "--home", str(clean), "--workers", "1")
    assert cli.status(server.home)["fingerprint"] == cli.status(clean)["fingerprint"]
    assert cli("verify", *home).returncode == 0
    server.stop()
    log = server.log.read_text()
    assert TOKEN not in log
    assert any(json.loads(line).get("job_id") == job_id for line in log.splitlines() if line.startswith("{"))


def test_serve_refuses_a_public_bind_without_a_token(cli: Cli, tmp_path: Path) -> None:
    result = cli("serve", "--home", str(tmp_path / "h"), "--host", "0.0.0.0", check=False, timeout=60)
    assert result.returncode == 3
    assert "HEADWATER_API_TOKEN" in result.stderr
