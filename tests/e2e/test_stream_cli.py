"""Stream mode through the CLI against real NATS JetStream and Redis: the same documents and
signals through ``ingest`` (batch) and through ``watch``/``publish`` + ``worker`` (stream) give
the same index fingerprint and the same feature rows."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from headwater.pipeline.signal_publish import partition_of
from tests.conftest import SAMPLES, Cli, assert_same_rows, entity_of, many_entities

EVENTS = SAMPLES / "signals" / "events.jsonl"


@pytest.fixture(params=["nats", "redis", "kafka"])
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def stream_env(**extra: str) -> dict[str, str]:
    return {"HEADWATER_ACK_WAIT_SECONDS": "2", **extra}


def kafka_partition(entity_id: str | None, partitions: int) -> int:
    from headwater.adapters.kafka import murmur2_partition

    return murmur2_partition(entity_id.encode(), partitions) if entity_id else 0


def export(cli: Cli, home: Path, out: Path, dataset: str = "windows") -> pl.DataFrame:
    cli(
        "features",
        "export",
        "--home",
        str(home),
        "--feature-set",
        "sensors",
        "--dataset",
        dataset,
        "--out",
        str(out),
    )
    return pl.read_parquet(out)


def test_docs_watch_and_worker_give_the_batch_fingerprint(
    cli: Cli, corpus: Path, tmp_path: Path, server: Any, topic: str
) -> None:
    batch, stream = tmp_path / "batch", tmp_path / "stream"
    bus = ["--bus", server.url, "--topic", topic]

    def step() -> dict[str, Any]:
        cli("ingest", "docs", str(corpus), "--home", str(batch))
        polled = cli.json_lines("watch", str(corpus), *bus, "--home", str(stream), "--once", "--json")
        cli("worker", "docs", *bus, "--home", str(stream), "--exit-when-idle", "2", env=stream_env())
        assert cli.status(batch)["fingerprint"] == cli.status(stream)["fingerprint"]
        assert polled[-1]["type"] == "ChangesPublished"
        return polled[-1]

    first = step()
    assert first["added"] == 6 and cli.status(stream)["chunks"] > 0
    (corpus / "guides" / "retries.md").unlink()
    edited = corpus / "guides" / "signals.md"
    edited.write_text(edited.read_text() + "\n\nA paragraph added after the first run.\n")
    second = step()
    assert (second["added"], second["updated"], second["deleted"]) == (0, 1, 1)
    assert cli.status(stream)["documents"] == 5
    cli("verify", "--home", str(stream))


@pytest.mark.parametrize("per_message", [1, 25])
def test_signals_publish_and_worker_give_the_backfill_rows(
    cli: Cli, tmp_path: Path, server: Any, topic: str, per_message: int
) -> None:
    """One event per message, or 25 (CloudEvents JSON batch format): a bad event is dead-lettered
    alone either way, and the rows equal the backfill's."""
    batch, stream = tmp_path / "batch", tmp_path / "stream"
    lines = EVENTS.read_text().splitlines()
    bad = ['{"entity_id": "pump-1", "event_time": "yesterday", "sequence": 1, "value": 1}', "{not json"]
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("\n".join([*lines[:400], *bad, *lines[400:]]) + "\n")
    cli("ingest", "signals", str(events_file), "--home", str(batch), "--feature-set", "sensors")
    published = json.loads(
        cli(
            "publish", "signals", str(events_file), "--bus", server.url, "--topic", topic,
            "--events-per-message", str(per_message), "--json",
        ).stdout
    )  # fmt: skip
    assert published["events"] == len(lines) + 2
    assert published["messages"] == -(-(len(lines) + 2) // per_message)
    events = cli.json_lines(
        "worker",
        "signals",
        "--bus",
        server.url,
        "--topic",
        topic,
        "--home",
        str(stream),
        "--feature-set",
        "sensors",
        "--exit-when-idle",
        "2",
        "--json",
        env=stream_env(),
    )
    stopped = events[-1]
    assert stopped["type"] == "WorkerStopped" and stopped["reason"] == "idle"
    dead = [e for e in events if e["type"] == "MessageDeadLettered"]
    dead_messages = len(dead) if per_message == 1 else 0  # else only events inside messages
    assert stopped["messages_acked"] + dead_messages == published["messages"]
    if per_message > 1:
        assert {d["position"].split("#")[1] for d in dead} == {"0", "1"}  # 401st and 402nd events
    for dataset in ("windows", "points"):
        a = export(cli, batch, tmp_path / f"a-{dataset}.parquet", dataset)
        b = export(cli, stream, tmp_path / f"b-{dataset}.parquet", dataset)
        assert_same_rows(a, b)
    # The invalid records of the sample reach the DLQ in both modes, with the message kept.
    letters = json.loads(cli("dlq", "list", "--home", str(stream), "--json").stdout)
    assert len([lt for lt in letters if lt["kind"] == "message"]) == len(dead) == 2
    batch_letters = json.loads(cli("dlq", "list", "--home", str(batch), "--json").stdout)
    assert len(batch_letters) == 2
    # Replay puts the messages back on their topic; still invalid, they are dead-lettered again.
    replayed = cli("dlq", "replay", "--all", "--home", str(stream), "--bus", server.url)
    assert "republished 2" in replayed.stdout
    again = cli.json_lines(
        "worker", "signals", "--bus", server.url, "--topic", topic, "--home", str(stream),
        "--feature-set", "sensors", "--exit-when-idle", "2", "--json", env=stream_env(),
    )  # fmt: skip
    assert len([e for e in again if e["type"] == "MessageDeadLettered"]) == 2
    letters = json.loads(cli("dlq", "list", "--home", str(stream), "--all", "--json").stdout)
    assert len(letters) == 4 and sum(lt["replayed_at"] is not None for lt in letters) == 2


def test_two_signal_workers_on_two_partitions_share_one_home(
    cli: Cli, tmp_path: Path, server: Any, topic: str
) -> None:
    """``publish --partitions 2`` routes entities by hash; two worker processes run at once, one
    per partition topic, writing one home. Each holds whole entities with its partition's own
    watermark, so together they equal a backfill of each partition's events."""
    batch, stream = tmp_path / "batch", tmp_path / "stream"
    events_file = many_entities(tmp_path)
    lines = events_file.read_text().splitlines()
    # Kafka: one topic of 2 partitions, entities placed by Kafka's default partitioner (murmur2).
    placed = kafka_partition if server.url.startswith("kafka://") else partition_of
    for partition in (0, 1):
        part = tmp_path / f"part{partition}.jsonl"
        part.write_text("\n".join(x for x in lines if placed(entity_of(x), 2) == partition) + "\n")
        cli("ingest", "signals", str(part), "--home", str(batch), "--feature-set", "sensors")
    published = json.loads(
        cli(
            "publish", "signals", str(events_file), "--bus", server.url, "--topic", topic,
            "--partitions", "2", "--events-per-message", "10", "--json",
        ).stdout
    )  # fmt: skip
    assert published["events"] == len(lines)

    def work(partition: int) -> dict[str, Any]:
        return cli.json_lines(
            "worker", "signals", "--bus", server.url, "--topic", f"{topic}.p{partition}",
            "--home", str(stream), "--feature-set", "sensors", "--exit-when-idle", "2", "--json",
            env=stream_env(),
        )[-1]  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        stopped = list(pool.map(work, (0, 1)))
    assert all(s["type"] == "WorkerStopped" and s["messages_acked"] > 0 for s in stopped)
    assert sum(s["messages_acked"] for s in stopped) == published["messages"]
    for dataset in ("windows", "points"):
        a = export(cli, batch, tmp_path / f"a-{dataset}.parquet", dataset)
        b = export(cli, stream, tmp_path / f"b-{dataset}.parquet", dataset)
        assert_same_rows(a, b)
