"""Every request to stop a run settles quickly at any corpus size, and the next run converges.

On 20,000 files (the hang needed more than ~1,000: a scan far ahead of its readers): ``aclose()``
of ``stream_events()`` and of ``iter_results()``, SIGINT and SIGTERM to an ``ingest docs`` in a
terminal's process group (the extraction workers get the signal too), and ``jobs pause`` of a
running job from another shell. Each stop settles within a few seconds, prints no traceback
from any process, and a re-run (or ``jobs resume``) ends with a clean run's fingerprint while
``verify`` passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater import load_settings
from headwater.compose import build_document_pipeline
from headwater.ops.index import status
from tests.conftest import Cli
from tests.reliability.test_server_crash import AUTH, Server

FILES = 20_000
SETTLE_SECONDS = 5.0  # the 2 s plus the batch in flight, on a shared 2-core machine
WORDS = "retry backoff vector chunk window signal embed index store crash replay watermark".split()  # noqa: SIM905


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    rng = random.Random(13)
    for i in range(FILES):
        folder = root / f"d{i % 40:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.md").write_text(f"# {i}\n\n" + " ".join(rng.choices(WORDS, k=60)) + "\n")
    return root


@pytest.fixture(scope="module")
def clean_fingerprint(big_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    settings = load_settings(home=tmp_path_factory.mktemp("clean"), embedder="hash://")
    final = asyncio.run(build_document_pipeline(settings, str(big_corpus)).run_async())
    assert final.documents_added == FILES
    return str(asyncio.run(status(settings))["fingerprint"])


def converges(cli: Cli, corpus: Path, home: Path, clean: str) -> None:
    cli("ingest", "docs", str(corpus), "--home", str(home), "--json", timeout=300)
    assert cli.status(home)["fingerprint"] == clean
    assert cli("verify", "--home", str(home), check=False).returncode == 0


@pytest.mark.parametrize("view", ["stream_events", "iter_results"])
async def test_aclose_after_two_events_settles_and_a_rerun_converges(
    view: str, big_corpus: Path, tmp_path: Path, clean_fingerprint: str, cli: Cli
) -> None:
    home = tmp_path / "home"
    pipeline = build_document_pipeline(load_settings(home=home, embedder="hash://"), str(big_corpus))
    events: AsyncIterator[Any] = getattr(pipeline, view)()
    seen = [await anext(events), await anext(events)]
    assert len(seen) == 2
    started = time.monotonic()
    await asyncio.wait_for(events.aclose(), 30)  # type: ignore[attr-defined]
    assert time.monotonic() - started < SETTLE_SECONDS
    converges(cli, big_corpus, home, clean_fingerprint)


def _first_completed(process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Read --json lines until a document was indexed: the run is in full swing."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if json.loads(line)["type"] == "DocumentCompleted":
            return
    pytest.fail("the run indexed nothing")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_to_the_process_group_ends_an_ingest_cleanly(
    signum: int, code: int, big_corpus: Path, tmp_path: Path, clean_fingerprint: str, cli: Cli
) -> None:
    home = tmp_path / "home"
    process = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "ingest", "docs", str(big_corpus), "--json", "--home", home],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        _first_completed(process)
        started = time.monotonic()
        os.killpg(process.pid, signum)  # to every process of the group, as Ctrl-C does
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - started < SETTLE_SECONDS
    assert process.returncode == code, err
    assert "Traceback" not in out + err
    assert "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted (") and "run the same command again" in lines[-1], err
    assert "document(s) indexed" in lines[-1]
    converges(cli, big_corpus, home, clean_fingerprint)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_jobs_pause_from_another_shell_settles_and_resume_converges(
    big_corpus: Path, tmp_path: Path, clean_fingerprint: str, cli: Cli
) -> None:
    home = tmp_path / "home"
    job_id = cli("jobs", "submit", str(big_corpus), "--home", str(home)).stdout.strip()

    def job() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(cli("jobs", "status", job_id, "--home", str(home), "--json").stdout)
        return data

    runner = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "jobs", "run", "--home", str(home)],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: job()["progress"].get("completed", 0) > 0, 60, "the job to index something")
        cli("jobs", "pause", job_id, "--home", str(home))
        settle = _wait(lambda: job()["status"] == "paused", 30, "the job to pause")
        _, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert settle < SETTLE_SECONDS + 1  # the runner sees another shell's request within a second
    assert runner.returncode == 0, err
    assert "Traceback" not in err
    assert job()["progress"]["completed"] < FILES

    cli("jobs", "resume", job_id, "--home", str(home))
    cli("jobs", "run", "--home", str(home), timeout=300)
    assert job()["status"] == "succeeded"
    assert cli.status(home)["fingerprint"] == clean_fingerprint
    assert cli("verify", "--home", str(home), check=False).returncode == 0


def test_api_pause_cancel_and_sigterm_of_a_busy_server_settle(
    big_corpus: Path, tmp_path: Path, clean_fingerprint: str, cli: Cli
) -> None:
    """``:pause`` and ``:cancel`` over HTTP settle, the next queued job then runs (it used to stay
    queued behind the hung one), and SIGTERM stops a server with a job in flight promptly (it
    used to ignore it until ``kill -9``); a restart resumes the job to a clean index."""
    server = Server(tmp_path / "home", tmp_path / "server.log")
    server.env.update(
        HEADWATER_EMBEDDER="hash://", HEADWATER_WORKERS="2", HEADWATER_API_SOURCE_ROOTS=str(big_corpus),
        HEADWATER_COMMIT_BATCH_CHUNKS="512", HEADWATER_LOG_FORMAT="json",
    )  # fmt: skip
    server.start()
    try:
        a, b = (
            httpx.post(f"{server.url}/v1/jobs", json={"source": str(big_corpus)}, headers=AUTH).json()["id"]
            for _ in range(2)
        )
        server.wait(a, lambda j: j["progress"].get("completed", 0) > 0)
        for job_id, verb, final in ((a, "pause", "paused"), (b, "cancel", "cancelled")):
            if job_id == b:
                server.wait(b, lambda j: j["status"] == "running")  # a's stop let the next job in
            started = time.monotonic()
            assert httpx.post(f"{server.url}/v1/jobs/{job_id}:{verb}", headers=AUTH).status_code == 200
            server.wait(job_id, lambda j, final=final: j["status"] == final, timeout=30)
            assert time.monotonic() - started < SETTLE_SECONDS
        httpx.post(f"{server.url}/v1/jobs/{a}:resume", headers=AUTH)
        server.wait(a, lambda j: j["status"] == "running" and j["runs"] == 2)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert time.monotonic() - started < SETTLE_SECONDS
        assert server.proc.returncode in (0, 143)
        server.start()  # the interrupted job is queued again and resumes
        done = server.wait(a, lambda j: j["status"] in ("succeeded", "failed"), timeout=300)
    finally:
        server.stop()
    assert done["status"] == "succeeded", done
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
    assert cli.status(server.home)["fingerprint"] == clean_fingerprint
