"""Document backfills on Spark ``local[2]`` (issue #19), through the CLI as a user runs them.

The Spark run writes to one PostgreSQL (state) and one pgvector table, as a cluster would; its
index must have the fingerprint of a local run over the same corpus, a re-run must find nothing to
do, edits and deletions must converge to the local result, and a run killed -9 midway, run again,
must end where a clean run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.test_spark_signals import spark_ready  # noqa: F401 - the module's skip/fail rule
from tests.reliability.test_docs_crash import make_corpus, mutate
from tests.reliability.test_shared_state_workers import shared_stores as worker_stores
from tests.servers import ServerProcess

pytestmark = pytest.mark.spark


def shared_stores(server: ServerProcess) -> dict[str, str]:
    """One PostgreSQL schema and pgvector table of their own, as the shared-state workers use, on Spark."""
    return {**worker_stores(server), "HEADWATER_COMPUTE": "local[2]"}


def ingest(cli: Cli, corpus: Path, home: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=env, timeout=300)


def fingerprint(cli: Cli, home: Path, env: dict[str, str] | None = None) -> tuple[Any, ...]:
    got = json.loads(cli("status", "--home", str(home), "--json", env=env).stdout)
    return got["fingerprint"], got["documents"], got["vectors"]


def test_spark_backfill_has_a_local_runs_fingerprint_and_stays_incremental(
    spark_ready: None,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    pgvector_server: ServerProcess,
) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 120, seed=5)
    stores = shared_stores(pgvector_server)
    started = cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "spark"), "--json", env=stores)
    assert "log level" in started.stderr  # Spark's JVM announces itself (the rerun below must not)
    first = json.loads(started.stdout.splitlines()[-1])
    assert first["type"] == "RunCompleted"
    assert first["documents_added"] == 120 and first["documents_unchanged"] == 0, first
    ingest(cli, corpus, tmp_path / "local")
    assert fingerprint(cli, tmp_path / "spark", stores) == fingerprint(cli, tmp_path / "local")

    rerun = cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "spark"), "--json", env=stores)
    again = json.loads(rerun.stdout.splitlines()[-1])
    assert (again["documents_added"], again["chunks_embedded"], again["documents_unchanged"]) == (0, 0, 120)
    assert "log level" not in rerun.stderr  # nothing to do: no Spark session was started

    mutate(corpus)  # two edited, one deleted, one added
    changed = ingest(cli, corpus, tmp_path / "spark", stores)
    assert (changed["documents_updated"], changed["documents_deleted"], changed["documents_added"]) == (
        2,
        1,
        1,
    )
    ingest(cli, corpus, tmp_path / "local")
    assert fingerprint(cli, tmp_path / "spark", stores) == fingerprint(cli, tmp_path / "local")


def test_a_killed_spark_backfill_run_again_converges(
    spark_ready: None,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    pgvector_server: ServerProcess,
) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 300, seed=9)
    stores = shared_stores(pgvector_server)
    home = tmp_path / "spark"
    argv = [
        sys.executable,
        "-m",
        "headwater.cli",
        "ingest",
        "docs",
        str(corpus),
        "--home",
        str(home),
        "--json",
    ]
    proc = subprocess.Popen(  # its own session: kill -9 takes the JVM and the Spark workers with it
        argv,
        env={**cli.env, **stores},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _indexed(cli, home, stores) < 40 and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the backfill ended before it could be killed: give it more documents"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    final = ingest(cli, corpus, home, stores)
    assert final["documents_failed"] == 0
    ingest(cli, corpus, tmp_path / "local")
    assert fingerprint(cli, home, stores) == fingerprint(cli, tmp_path / "local")


def _indexed(cli: Cli, home: Path, stores: dict[str, str]) -> int:
    result = cli("status", "--home", str(home), "--json", env=stores, check=False)
    if result.returncode != 0:
        return 0
    return int(json.loads(result.stdout).get("documents", 0))


def test_spark_refuses_the_homes_own_stores(spark_ready: None, cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 3, seed=1)
    result = cli(
        "ingest", "docs", str(corpus), "--home", str(tmp_path / "h"), "--compute", "local[2]", check=False
    )
    assert result.returncode == 3, result.stderr
    assert "needs a metadata store every executor reaches" in result.stderr
    assert "Traceback" not in result.stderr


def test_spark_backfill_into_a_chroma_server(
    spark_ready: None,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    pgvector_server: ServerProcess,
    chroma_server: ServerProcess,
) -> None:
    """The other shared vector store: Spark tasks upsert into one Chroma server collection."""
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 40, seed=3)
    stores = shared_stores(pgvector_server)
    stores["HEADWATER_VECTOR_STORE"] = f"chroma://{chroma_server.hostport}/c{uuid.uuid4().hex[:10]}"  # type: ignore[attr-defined]
    first = ingest(cli, corpus, tmp_path / "spark", stores)
    assert first["documents_added"] == 40, first
    ingest(cli, corpus, tmp_path / "local")
    assert fingerprint(cli, tmp_path / "spark", stores) == fingerprint(cli, tmp_path / "local")
