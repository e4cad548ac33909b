"""Several workers, several machines, one state: document workers with homes of their own but one
PostgreSQL (state, DLQ, cache) and one pgvector table, fed by one bus, converge to the index of
one batch run, also when one of them is killed -9 mid-batch. Their homes share nothing: only the
database serializes them."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.reliability.test_docs_crash import make_corpus
from tests.servers import ServerProcess

ENV = {"HEADWATER_ACK_WAIT_SECONDS": "2"}


@pytest.fixture(params=["nats", "redis"])
def bus(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


def shared_stores(server: ServerProcess) -> dict[str, str]:
    name = uuid.uuid4().hex[:10]
    netloc = server.netloc  # type: ignore[attr-defined]
    return {
        "HEADWATER_METADATA_STORE": f"postgresql://{netloc}/postgres?schema=s{name}",
        "HEADWATER_VECTOR_STORE": f"pgvector://{netloc}/postgres?table=v{name}",
    }


def test_two_workers_with_their_own_homes_share_one_database(
    cli: Cli, tmp_path: Path, bus: Any, pgvector_server: ServerProcess
) -> None:
    corpus, batch = tmp_path / "corpus", tmp_path / "batch"
    make_corpus(corpus, 120, seed=9)
    cli("ingest", "docs", str(corpus), "--home", str(batch))
    topic = f"t{uuid.uuid4().hex[:10]}"
    route = ["--bus", bus.url, "--topic", topic]
    shared = {**ENV, **shared_stores(pgvector_server)}
    worker = [sys.executable, "-m", "headwater.cli", "worker", "docs", *route, "--batch-size", "10"]
    doomed = subprocess.Popen(
        [*worker, "--home", str(tmp_path / "machine-a"), "--exit-when-idle", "20"],
        env={**cli.env, **shared, "HEADWATER_CRASH_AT": "mid_upsert:3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    survivor = subprocess.Popen(
        [*worker, "--home", str(tmp_path / "machine-b"), "--exit-when-idle", "8"],
        env={**cli.env, **shared},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # both join the group before the changes are published
        cli("watch", str(corpus), *route, "--home", str(tmp_path / "watcher"), "--once")
        assert doomed.wait(timeout=180) == -9, doomed.stderr.read() if doomed.stderr else ""
        assert survivor.wait(timeout=300) == 0, survivor.stderr.read() if survivor.stderr else ""
    finally:
        doomed.kill()
        survivor.kill()
    # Either home reads the one state: the same index as one batch run.
    for machine in ("machine-a", "machine-b"):
        home = tmp_path / machine
        got = cli.json_lines("status", "--home", str(home), "--json", env=shared)[0]
        want = cli.status(batch)
        assert (got["fingerprint"], got["documents"], got["vectors"]) == (
            want["fingerprint"],
            want["documents"],
            want["vectors"],
        ), machine
    assert cli("verify", "--home", str(tmp_path / "machine-a"), env=shared, check=False).returncode == 0
