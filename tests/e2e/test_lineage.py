"""OpenLineage run events through the CLI: START then COMPLETE (or FAIL) for a document run and a
signal backfill, with the source as input and the stores as outputs, sent to a local receiver or
a file; a receiver that is down costs a warning, not the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLES, Cli
from tests.servers import free_port

pytest.importorskip("openlineage.client")


class Receiver:
    """A lineage endpoint (as Marquez serves it): every POSTed event, parsed."""

    def __init__(self) -> None:
        events: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events.append({"path": self.path, **json.loads(body)})
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.events = events
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


def test_a_document_run_reports_start_and_complete_with_its_datasets(
    cli: Cli, corpus: Path, home: Path, receiver: Receiver
) -> None:
    done = cli.last_event(
        "ingest", "docs", str(corpus), "--home", str(home), env={"OPENLINEAGE_URL": receiver.url}
    )
    start, complete = receiver.events
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["path"] == "/api/v1/lineage"
    assert start["run"]["runId"] == complete["run"]["runId"]
    job = (complete["job"]["namespace"], complete["job"]["name"])
    assert job == ("headwater", f"docs:{home.resolve()}")
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [("file", str(corpus.resolve()))]
    outputs = [(d["namespace"], d["name"]) for d in complete["outputs"]]
    assert outputs == [("lancedb", f"{home.resolve()}/vectors"), ("sqlite", f"{home.resolve()}/state.db")]
    rows = complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"]
    assert rows == done["chunks_embedded"] > 0


def test_a_failed_run_reports_fail_without_secrets_and_a_dead_receiver_costs_nothing(
    cli: Cli, corpus: Path, tmp_path: Path, receiver: Receiver
) -> None:
    store = f"pgvector://me:s3cret@127.0.0.1:{free_port()}/db?table=chunks"
    env = {"HEADWATER_OPENLINEAGE_URL": receiver.url, "HEADWATER_VECTOR_STORE": store}
    failed = cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "a"), check=False, env=env)
    assert failed.returncode == 5, failed.stderr
    assert [e["eventType"] for e in receiver.events] == ["START", "FAIL"]
    message = receiver.events[1]["run"]["facets"]["errorMessage"]["message"]
    assert "store unavailable" in message.lower() or "connection" in message.lower(), message
    assert "s3cret" not in json.dumps(receiver.events)
    dead = f"http://127.0.0.1:{free_port()}"
    ok = cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "b"), env={"OPENLINEAGE_URL": dead})
    assert "OpenLineage" in ok.stderr and "Traceback" not in ok.stderr
    assert cli.status(tmp_path / "b")["documents"] == 6


def test_a_signal_backfill_reports_to_a_file(cli: Cli, tmp_path: Path) -> None:
    events = SAMPLES / "signals"
    log = tmp_path / "lineage.jsonl"
    cli("ingest", "signals", str(events), "--home", str(tmp_path / "h"), "--feature-set", "sensors",
        env={"HEADWATER_OPENLINEAGE_URL": f"file://{log}", "OPENLINEAGE_NAMESPACE": "plant-7"})  # fmt: skip
    start, complete = [json.loads(line) for line in log.read_text().splitlines()]
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert complete["job"]["namespace"] == "plant-7" and complete["job"]["name"].endswith(":sensors")
    assert [d["name"] for d in complete["inputs"]] == [str(events.resolve())]
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] > 0
