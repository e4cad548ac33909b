"""Publishing signals: batch messages stay under the size limit, partitions keep each entity
whole and in file order."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from tests.conftest import SAMPLES, many_entities

from headwater import cloudevents
from headwater.pipeline.signal_publish import MAX_MESSAGE_BYTES, partition_of, partitioned_messages

EVENTS = SAMPLES / "signals" / "events.jsonl"


def test_partitioned_publishing_routes_each_entity_to_one_partition_in_order(tmp_path: Path) -> None:
    events_file = many_entities(tmp_path)
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    lines = [e.get("data", e) for e in lines if isinstance(e.get("data", e).get("entity_id"), str)]
    seen: dict[int, list[tuple[str, int]]] = {0: [], 1: [], 2: []}
    for partition, bodies, _ in partitioned_messages(events_file, per_message=4, partitions=3, batch=5):
        for body in bodies:
            for event in cloudevents.split_batch(body):
                data = json.loads(event)["data"]
                assert partition_of(data["entity_id"], 3) == partition
                seen[partition].append((data["entity_id"], data["sequence"]))
    assert all(seen.values()) and sum(map(len, seen.values())) == len(lines)
    for partition, events in seen.items():  # file order within a partition
        mine = [e for e in lines if partition_of(e["entity_id"], 3) == partition]
        assert events == [(e["entity_id"], e["sequence"]) for e in mine]
    assert partition_of("pump-1", 3) == zlib.crc32(b"pump-1") % 3  # stable across runs and machines


def test_batch_messages_close_early_when_large(tmp_path: Path) -> None:
    events_file = tmp_path / "big.jsonl"
    note = "x" * 1000
    events_file.write_text(
        "".join(
            json.dumps({"entity_id": "e", "event_time": i, "sequence": i, "value": 1.0, "note": note}) + "\n"
            for i in range(2000)
        )
    )
    messages = [m for _, bodies, _ in partitioned_messages(events_file, per_message=1000) for m in bodies]
    assert len(messages) > 2  # 1000 events of ~1.2 KB would be ~1.2 MB: split by size
    assert all(len(m) < MAX_MESSAGE_BYTES + 2000 for m in messages)
    sequences = [json.loads(e)["data"]["sequence"] for m in messages for e in cloudevents.split_batch(m)]
    assert sequences == list(range(2000))
