"""Issue #13: ``publish signals`` takes what ``ingest signals`` takes — a file or a folder of
JSONL, CSV and Parquet — and puts every event on a real bus in the order ingest reads them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from headwater import registry
from headwater.pipeline.signal_inputs import list_inputs, read_chunks
from headwater.pipeline.signal_publish import partitioned_messages
from headwater.ports import StreamBus
from headwater.stages.decode import DecodeLimits, decode_json_lines
from tests.conftest import Cli

LIMITS = DecodeLimits(now_ms=2_000_000_000_000)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_folder(root: Path) -> Path:
    """Files whose names sort differently from their creation order, in a subfolder too,
    beside files ingest skips (hidden, other suffixes)."""
    inputs = root / "inputs"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "b.jsonl").write_text(
        "".join(
            f'{{"entity_id":"e{i % 2}","event_time":{T0 + i * 1000},"sequence":{i},"value":{i}.5}}\n'
            for i in range(3)
        )
        + "\n"
    )
    (inputs / "a.csv").write_text(
        "entity_id,event_time,sequence,value\ne0,2026-01-01T00:00:05Z,10,1.25\ne1,1767225606000,11,7\n"
    )
    (inputs / "sub" / "c.ndjson").write_text(
        '{"entity_id":"e2","event_time":"2026-01-01T00:00:09.500Z","sequence":20,"payload":{"value":3.0}}\n'
    )
    pl.DataFrame(
        {
            "entity_id": ["e3", "e4"],
            "event_time": [
                datetime(2026, 1, 1, 0, 0, 12, tzinfo=UTC),
                datetime(2026, 1, 1, 0, 0, 13, tzinfo=UTC),
            ],
            "sequence": [30, 31],
            "value": [0.5, -1.0],
        }
    ).write_parquet(inputs / "z.parquet")
    (inputs / ".hidden.jsonl").write_text('{"entity_id":"hidden","event_time":0,"sequence":0,"value":0}\n')
    (inputs / "notes.txt").write_text("not an input\n")
    return inputs


def ingest_order(inputs: Path) -> list[tuple[Any, ...]]:
    """(entity_id, event_time ms, sequence, value) in the order ``ingest signals`` reads them."""
    rows: list[tuple[Any, ...]] = []
    for chunk in read_chunks(list_inputs(inputs), 0, 0, 1000, LIMITS):
        assert not chunk.errors
        rows += chunk.frame.select("entity_id", "event_time", "sequence", "value").rows()
    return rows


def decoded(bodies: list[bytes]) -> list[tuple[Any, ...]]:
    frame, errors = decode_json_lines(bodies, 1, LIMITS)
    assert not errors
    return frame.select("entity_id", "event_time", "sequence", "value").rows()


def test_listing_is_the_one_ingest_uses(tmp_path: Path) -> None:
    inputs = make_folder(tmp_path)
    assert [f.relpath for f in list_inputs(inputs)] == ["a.csv", "b.jsonl", "sub/c.ndjson", "z.parquet"]
    bodies = [body for _, messages, _ in partitioned_messages(inputs) for body in messages]
    expected = ingest_order(inputs)
    assert len(expected) == 8
    assert decoded(bodies) == expected
    single = [body for _, messages, _ in partitioned_messages(inputs / "a.csv") for body in messages]
    assert decoded(single) == expected[:2]


async def _drain(url: str, topic: str, want: int) -> list[bytes]:
    bus: StreamBus = registry.create("bus", url, ack_wait_seconds=30)
    await bus.open()
    try:
        got: list[bytes] = []
        while len(got) < want:
            messages = await bus.consume(topic, "check", max_messages=100, timeout_seconds=5)
            if not messages:
                break
            got += [m.body for m in messages]
            await bus.ack(messages)
        return got
    finally:
        await bus.close()


@pytest.fixture(params=["nats", "redis"])
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


def test_publish_a_folder_to_a_real_bus_in_ingest_order(cli: Cli, tmp_path: Path, server: Any) -> None:
    inputs = make_folder(tmp_path)
    topic = f"t{uuid.uuid4().hex[:10]}"
    published = cli.last_event("publish", "signals", str(inputs), "--bus", server.url, "--topic", topic)
    assert (published["messages"], published["events"]) == (8, 8)
    bodies = asyncio.run(_drain(server.url, topic, 8))
    assert decoded(bodies) == ingest_order(inputs)
