"""Stream workers under kill -9, poison messages, a second worker taking over, and a bus restart,
against real NATS JetStream, Redis and Kafka (Tansu; restarted on S3 storage, which keeps data).
Every scenario ends equal to a clean run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import SAMPLES, Cli, assert_same_rows
from tests.e2e.test_stream_cli import export
from tests.reliability.test_docs_crash import make_corpus

EVENTS = SAMPLES / "signals" / "events.jsonl"
ENV = {"HEADWATER_ACK_WAIT_SECONDS": "2"}


@pytest.fixture(params=["nats", "redis", "kafka"])
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


def new_topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def signal_worker(cli: Cli, server: Any, topic: str, home: Path, *extra: str, **env: str) -> Any:
    return cli(
        "worker",
        "signals",
        "--bus",
        server.url,
        "--topic",
        topic,
        "--home",
        str(home),
        "--feature-set",
        "sensors",
        "--batch-size",
        "100",
        "--exit-when-idle",
        "3",
        "--json",
        *extra,
        env={**ENV, **env},
        check=not env.get("HEADWATER_CRASH_AT"),
    )


def clean_signal_run(cli: Cli, server: Any, tmp_path: Path) -> Path:
    topic, home = new_topic(), tmp_path / "clean"
    cli("publish", "signals", str(EVENTS), "--bus", server.url, "--topic", topic)
    signal_worker(cli, server, topic, home)
    return home


def assert_same_features(cli: Cli, a: Path, b: Path, tmp_path: Path) -> None:
    for dataset in ("windows", "points", "late"):
        x = export(cli, a, tmp_path / f"x-{dataset}.parquet", dataset).drop("input_ref", strict=False)
        y = export(cli, b, tmp_path / f"y-{dataset}.parquet", dataset).drop("input_ref", strict=False)
        assert_same_rows(x, y)


@pytest.mark.parametrize(
    ("point", "per_message"),
    [("stream_after_intent:3", 1), ("stream_after_commit:3", 1), ("stream_after_intent:2", 5)],
)
def test_signal_worker_killed_mid_stream_resumes_exactly(
    cli: Cli, tmp_path: Path, server: Any, point: str, per_message: int
) -> None:
    """Before the commit, the batch comes back after the ack wait and is replayed first; after
    the commit but before the ack, it comes back and is acked without effect. Events batched 5
    per message (the clean run has one per message) end in the same rows."""
    clean = clean_signal_run(cli, server, tmp_path)
    topic, home = new_topic(), tmp_path / "crashed"
    batching = ["--events-per-message", str(per_message)]
    cli("publish", "signals", str(EVENTS), "--bus", server.url, "--topic", topic, *batching)
    killed = signal_worker(cli, server, topic, home, HEADWATER_CRASH_AT=point)
    assert killed.returncode == -9
    events = [json.loads(line) for line in signal_worker(cli, server, topic, home).stdout.splitlines()]
    assert events[-1]["type"] == "WorkerStopped" and events[-1]["messages_acked"] > 0
    if point.startswith("stream_after_commit"):
        assert sum(e.get("already_done", 0) for e in events if e["type"] == "WorkerBatch") == 100
    assert_same_features(cli, clean, home, tmp_path)


def test_docs_worker_killed_mid_upsert_converges(cli: Cli, tmp_path: Path, server: Any) -> None:
    corpus, batch, stream = tmp_path / "corpus", tmp_path / "batch", tmp_path / "stream"
    make_corpus(corpus, 60, seed=4)
    topic = new_topic()
    bus = ["--bus", server.url, "--topic", topic]
    cli("ingest", "docs", str(corpus), "--home", str(batch))
    cli("watch", str(corpus), *bus, "--home", str(stream), "--once")
    crashed = cli(
        "worker",
        "docs",
        *bus,
        "--home",
        str(stream),
        "--batch-size",
        "20",
        "--exit-when-idle",
        "3",
        env={**ENV, "HEADWATER_CRASH_AT": "mid_upsert:2"},
        check=False,
    )
    assert crashed.returncode == -9
    cli("worker", "docs", *bus, "--home", str(stream), "--exit-when-idle", "4", env=ENV)
    assert cli.status(stream)["fingerprint"] == cli.status(batch)["fingerprint"]
    cli("verify", "--home", str(stream))


def test_poison_document_reaches_the_dlq_and_the_rest_is_indexed(
    cli: Cli, tmp_path: Path, server: Any
) -> None:
    """A document that kills the worker every time: after max_attempts it is dead-lettered with its
    reason, and every other document of the stream is indexed."""
    corpus, batch, stream = tmp_path / "corpus", tmp_path / "batch", tmp_path / "stream"
    make_corpus(corpus, 12, seed=5)
    topic = new_topic()
    bus = ["--bus", server.url, "--topic", topic]
    cli("watch", str(corpus), *bus, "--home", str(stream), "--once")
    poison = {**ENV, "HEADWATER_CRASH_AT": "extract@part3/doc0003.md"}
    codes = []
    for _ in range(6):
        run = cli(
            "worker",
            "docs",
            *bus,
            "--home",
            str(stream),
            "--batch-size",
            "4",
            "--exit-when-idle",
            "3",
            env=poison,
            check=False,
        )
        codes.append(run.returncode)
        if run.returncode == 0:
            break
    assert codes[-1] == 0 and codes.count(-9) >= 1
    letters = json.loads(cli("dlq", "list", "--home", str(stream), "--json").stdout)
    assert [lt["input_ref"] for lt in letters if lt["kind"] == "document"] == ["part3/doc0003.md"]
    assert cli.status(stream)["documents"] == 12  # the poison one is known, as failed, with no chunks
    (corpus / "part3" / "doc0003.md").unlink()
    cli("ingest", "docs", str(corpus), "--home", str(batch))
    assert cli.status(stream)["fingerprint"] == cli.status(batch)["fingerprint"]


def test_a_killed_workers_messages_go_to_the_surviving_worker(cli: Cli, tmp_path: Path, server: Any) -> None:
    """Two workers in one consumer group: one is killed mid-batch, the other gets its messages
    after the ack wait and the index converges.

    The doomed worker is alone in the group when the changes are published, so the first batch
    is surely its own: with both running, a quick survivor could take every message first."""
    corpus, batch, stream = tmp_path / "corpus", tmp_path / "batch", tmp_path / "stream"
    make_corpus(corpus, 40, seed=6)
    topic = new_topic()
    bus = ["--bus", server.url, "--topic", topic]
    cli("ingest", "docs", str(corpus), "--home", str(batch))
    worker = [sys.executable, "-m", "headwater.cli", "worker", "docs", *bus, "--home", str(stream)]
    doomed = subprocess.Popen(
        [*worker, "--batch-size", "5"],
        env={**cli.env, **ENV, "HEADWATER_CRASH_AT": "after_upsert"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)  # the doomed worker joins the group
        cli("watch", str(corpus), *bus, "--home", str(stream), "--once")
        assert doomed.wait(timeout=120) == -9
    finally:
        doomed.kill()
    out = cli(*worker[3:], "--batch-size", "5", "--exit-when-idle", "8", "--json", env=ENV).stdout
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["type"] == "WorkerStopped" and events[-1]["messages_acked"] > 0
    assert cli.status(stream)["fingerprint"] == cli.status(batch)["fingerprint"]
    cli("verify", "--home", str(stream))


def test_worker_rides_out_a_bus_restart(
    cli: Cli, tmp_path: Path, server: Any, request: pytest.FixtureRequest
) -> None:
    if server.url.startswith("kafka://"):  # the in-memory Tansu loses everything on a restart
        server = request.getfixturevalue("kafka_s3_server")
    clean = clean_signal_run(cli, server, tmp_path)
    topic, home = new_topic(), tmp_path / "restarted"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater.cli",
            "worker",
            "signals",
            "--bus",
            server.url,
            "--topic",
            topic,
            "--home",
            str(home),
            "--feature-set",
            "sensors",
            "--batch-size",
            "100",
            "--exit-when-idle",
            "10",
            "--json",
        ],
        env={**cli.env, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        server.stop()
        time.sleep(3)  # the worker's polls fail meanwhile; it backs off and retries
        server.start()
        cli("publish", "signals", str(EVENTS), "--bus", server.url, "--topic", topic)
        out, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["messages_acked"] == pl.read_ndjson(EVENTS).height
    assert_same_features(cli, clean, home, tmp_path)
    # The outage is in the event stream: the bus's link lost, then regained.
    links = [e for e in map(json.loads, out.splitlines()) if e["type"] == "AdapterStateChange"]
    assert [(e["adapter"], e["state"]) for e in links] == [("bus", "lost"), ("bus", "regained")], links


def test_sigterm_drains_the_batch_in_flight_and_leaves_the_rest(
    cli: Cli, tmp_path: Path, server: Any
) -> None:
    """SIGTERM: intake stops, what was taken is committed and acked, the worker exits 0; a second
    worker finishes the topic and the result equals one uninterrupted run."""
    import signal

    clean = clean_signal_run(cli, server, tmp_path)
    topic, home = new_topic(), tmp_path / "drained"
    cli("publish", "signals", str(EVENTS), "--bus", server.url, "--topic", topic)
    worker = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "worker", "signals", "--bus", server.url, "--topic", topic,
         "--home", str(home), "--feature-set", "sensors", "--batch-size", "20", "--json"],
        env={**cli.env, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # wait until it is mid-stream
            if json.loads(line)["type"] == "WorkerBatch":
                break
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["type"] == "WorkerStopped" and stopped["reason"] == "signal"
    assert 0 < stopped["messages_acked"] < pl.read_ndjson(EVENTS).height
    signal_worker(cli, server, topic, home)
    assert_same_features(cli, clean, home, tmp_path)
