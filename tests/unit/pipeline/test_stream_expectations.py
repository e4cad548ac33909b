"""Issue #19 in stream mode (in-memory bus): the worker checks each micro-batch's expectations with
the backfill's stage; a ``dlq`` failure dead-letters its message (or, inside a batch message, the
event alone, with its own body); freshness is judged against the worker's clock; the rows equal
a backfill of the same events under the same declaration."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.conftest import assert_same_rows

from headwater import cloudevents
from headwater.compose import (
    make_bus,
    make_metadata_store,
    make_offline_store,
    open_signal_pipeline,
    open_signal_worker,
)
from headwater.config import Settings, load_settings
from headwater.events import ExpectationsFailed, MessageDeadLettered, SignalRejected, WorkerStopped
from headwater.featuresets import build_feature_set
from headwater.observability import Metrics
from headwater.ops.features import export_rows
from headwater.pipeline.signal_publish import signal_messages

DECLARED = {
    "windows": ["1m"],
    "features": {"temp": ["count", "max"], "status": ["count", "last"]},
    "expectations": {
        "temp": {"max": 60, "on_fail": "dlq"},
        "status": {"allowed": ["ok"]},
        "freshness": "10m",
    },
}


def settings(tmp_path: Path, name: str) -> Settings:
    return load_settings(home=tmp_path / name, bus=f"memory://{uuid.uuid4().hex[:8]}", ack_wait_seconds=0.3)


def write_events(path: Path) -> list[dict[str, object]]:
    """Twelve events an hour old (stale for a 10-minute freshness); events 3 and 9 are too hot."""
    start = (time.time_ns() // 1_000_000 // 60_000 - 60) * 60_000
    payloads = [
        {"temp": 99.0 if i in (3, 9) else 20.0 + i, "status": "ok" if i % 4 else "odd"} for i in range(12)
    ]
    events = [
        {"entity_id": "room", "event_time": start + i * 1000, "sequence": i, "payload": p}
        for i, p in enumerate(payloads)
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


async def test_stream_dead_letters_dlq_failures_counts_warnings_and_equals_the_backfill(
    tmp_path: Path,
) -> None:
    source = tmp_path / "events.jsonl"
    write_events(source)
    spec = build_feature_set("climate", DECLARED)
    batch, stream = settings(tmp_path, "batch"), settings(tmp_path, "stream")
    async with open_signal_pipeline(batch, source, spec) as pipeline:
        backfill = [event async for event in pipeline.stream_events()]
    assert [e.input_ref for e in backfill if isinstance(e, SignalRejected)] == [
        "events.jsonl:line 4",
        "events.jsonl:line 10",
    ]

    singles = [body for bodies in signal_messages(source) for body in bodies]
    messages = [*singles[:6], cloudevents.encode_batch(singles[6:12])]  # event 9 inside a batch message
    bus = make_bus(stream)
    await bus.open()
    await bus.publish("signals", messages)
    async with open_signal_worker(stream, spec, bus=bus, exit_when_idle_seconds=1.0, batch_size=100) as w:
        events = [event async for event in w.stream_events()]
    assert isinstance(events[-1], WorkerStopped)

    dead = [e for e in events if isinstance(e, MessageDeadLettered)]
    assert [(d.position, d.message) for d in dead] == [
        ("4", "temp: expectation max=60 failed: 99"),
        ("7#3", "temp: expectation max=60 failed: 99"),
    ]
    [failed] = [e for e in events if isinstance(e, ExpectationsFailed)]
    assert {(f.field, f.expectation, f.on_fail, f.count) for f in failed.failures} == {
        ("temp", "max", "dlq", 2),
        ("status", "allowed", "warn", 3),
        ("event_time", "freshness", "warn", 1),
    }
    assert failed.dead_lettered == 2 and failed.newest_event_age_ms is not None
    assert failed.newest_event_age_ms > 600_000

    metadata = make_metadata_store(stream)
    await metadata.open()
    try:
        letters = sorted(await metadata.list(), key=lambda lt: lt.id)
    finally:
        await metadata.close()
    assert [(lt.input_ref, lt.payload) for lt in letters] == [
        ("signals@4", singles[3]),
        ("signals@7#3", singles[9]),
    ]
    assert await bus.pending("signals", "features-climate") == 0

    a = await export_rows(make_offline_store(batch), "climate", dataset="windows")
    b = await export_rows(make_offline_store(stream), "climate", dataset="windows")
    assert_same_rows(a, b)
    assert a["temp_count"].sum() == 10 and a["temp_max"].max() < 60

    metrics = Metrics()
    for event in events:
        metrics.observe(event)
    text = metrics.render()[0].decode()
    assert (
        'headwater_expectation_failures_total{expectation="max",feature_set="climate",field="temp"} 2.0'
        in text
    )
    assert 'expectation="freshness",feature_set="climate",field="event_time"} 1.0' in text
