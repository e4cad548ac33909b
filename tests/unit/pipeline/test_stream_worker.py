"""The stream worker on the in-memory bus: ack after commit, poison → DLQ after N attempts,
replays change nothing, graceful drain, and signals parity with the backfill."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import assert_same_rows, entity_of, many_entities

from headwater import cloudevents
from headwater.adapters.hashembed import HashEmbedder
from headwater.compose import (
    build_document_pipeline,
    make_bus,
    make_metadata_store,
    make_offline_store,
    make_watcher,
    open_doc_worker,
    open_signal_pipeline,
    open_signal_worker,
    resolve_feature_set,
)
from headwater.config import Settings, load_settings
from headwater.errors import RetryableError
from headwater.events import DocumentCompleted, Event, MessageDeadLettered, WorkerBatch, WorkerStopped
from headwater.ops.features import export_rows
from headwater.ops.index import status
from headwater.pipeline.doc_stream import DOCS_TOPIC
from headwater.pipeline.signal_publish import (
    partition_of,
    partition_topic,
    partitioned_messages,
    signal_messages,
)
from headwater.pipeline.stream import Delivery, StreamWorker, WorkerOptions
from headwater.ports import StreamBus

ROOT = Path(__file__).resolve().parents[3]
EVENTS = ROOT / "samples" / "signals" / "events.jsonl"


def settings(tmp_path: Path, name: str, **kw: Any) -> Settings:
    return load_settings(
        home=tmp_path / name, bus=f"memory://{uuid.uuid4().hex[:8]}", workers=1, ack_wait_seconds=0.3, **kw
    )


async def collect(worker: StreamWorker) -> list[Event]:
    return [event async for event in worker.stream_events()]


class RecordingSink:
    """Commits by appending to a list; can fail a given body, or every batch, on demand."""

    def __init__(self, fail_body: bytes | None = None, fail_all: bool = False) -> None:
        self.committed: list[bytes] = []
        self.fail_body = fail_body
        self.fail_all = fail_all

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def idle(self, *, final: bool) -> list[Event]:
        return []

    async def handle(self, batch: list[Delivery]) -> list[Event]:
        if self.fail_all:
            raise RetryableError("sink down")
        for delivery in batch:
            assert delivery.event is not None
            if bytes(delivery.event.data) == self.fail_body:
                raise RetryableError("this one always fails")
            self.committed.append(bytes(delivery.event.data))
        return []


def ce(n: int) -> bytes:
    return cloudevents.make_event(id=str(n), source="test", type="t", data=b'{"n":%d}' % n)


async def run_sink(sink: Any, bodies: list[bytes], s: Settings, **opts: Any) -> tuple[list[Event], StreamBus]:
    bus = make_bus(s)
    await bus.open()
    await bus.publish("t", bodies)
    metadata = make_metadata_store(s)
    await metadata.open()
    options = WorkerOptions(
        **{"topic": "t", "group": "g", "batch_size": 4, "exit_when_idle_seconds": 1.5, **opts}
    )
    try:
        events = await collect(StreamWorker(make_bus(s), sink, metadata, options))
        letters = await metadata.list()
    finally:
        await metadata.close()
    return [*events, *letters], bus  # type: ignore[list-item]


async def test_malformed_message_is_dead_lettered_with_its_body_and_the_rest_flows(tmp_path: Path) -> None:
    s = settings(tmp_path, "h")
    sink = RecordingSink()
    out, bus = await run_sink(sink, [ce(1), b"{not json", ce(2)], s)
    assert sink.committed == [b'{"n":1}', b'{"n":2}']
    dead = [e for e in out if isinstance(e, MessageDeadLettered)]
    assert len(dead) == 1 and dead[0].error_type == "InputError" and "not a CloudEvent" in dead[0].message
    letter = out[-1]
    assert letter.kind == "message" and letter.payload == b"{not json" and letter.input_ref == "t@2"
    assert await bus.dead_letters("t") == [(b"{not json", f"InputError: {dead[0].message}")]
    assert await bus.pending("t", "g") == 0


async def test_a_failing_message_reaches_the_dlq_after_exactly_max_attempts(tmp_path: Path) -> None:
    s = settings(tmp_path, "h")
    sink = RecordingSink(fail_body=b'{"n":2}')
    out, bus = await run_sink(sink, [ce(2)] + [ce(n) for n in range(10, 14)], s)
    dead = [e for e in out if isinstance(e, MessageDeadLettered)]
    assert [d.deliveries for d in dead] == [3]
    assert sorted(sink.committed) == sorted(b'{"n":%d}' % n for n in range(10, 14))
    assert await bus.pending("t", "g") == 0


async def test_replay_storm_every_message_three_times_adds_no_rows(tmp_path: Path) -> None:
    """Signals: every CloudEvent delivered three times (as redeliveries come: soon after the
    first) gives exactly the feature rows of one delivery. (A copy arriving after the largest
    window of its event closed is past the dedup horizon, DESIGN §5.7: it is recorded in the
    late table like any late event and changes no row.)"""
    once, storm = settings(tmp_path, "once"), settings(tmp_path, "storm")
    spec = resolve_feature_set(once, "sensors")
    for s, copies in ((once, 1), (storm, 3)):
        bus = make_bus(s)
        await bus.open()
        for bodies in signal_messages(EVENTS, batch=50):
            for _ in range(copies):
                await bus.publish("signals", bodies)
        async with open_signal_worker(s, spec, bus=bus, exit_when_idle_seconds=1.0, batch_size=200) as w:
            events = await collect(w)
        assert isinstance(events[-1], WorkerStopped)
    for dataset in ("windows", "points"):
        a = await export_rows(make_offline_store(once), "sensors", dataset=dataset)
        b = await export_rows(make_offline_store(storm), "sensors", dataset=dataset)
        assert_same_rows(a, b)


MULTI_FIELD = "value:count,mean,std,ewma,zscore;rpm:mean,max,last,ewma;status:last,count_distinct"
"""The sample's three payload fields (rpm and status on a fifth of the events)."""


@pytest.mark.parametrize("features", [None, MULTI_FIELD], ids=["value", "multi-field"])
@pytest.mark.parametrize("per_message", [1, 7])
async def test_signals_stream_equals_the_backfill(
    tmp_path: Path, per_message: int, features: str | None
) -> None:
    """Also with events batched 7 per message (CloudEvents JSON batch format; the last message
    holds the remainder): batching changes the transport, never the rows; and with several
    fields per event."""
    batch, stream = settings(tmp_path, "batch", micro_batch_events=100), settings(tmp_path, "stream")
    spec = resolve_feature_set(batch, "sensors", features=features)
    async with open_signal_pipeline(batch, EVENTS, spec) as pipeline:
        await pipeline.run_async()
    bus = make_bus(stream)
    await bus.open()
    for bodies in signal_messages(EVENTS, per_message=per_message):
        await bus.publish("signals", bodies)
    async with open_signal_worker(
        stream, spec, bus=bus, exit_when_idle_seconds=1.0, batch_size=100 // per_message
    ) as w:
        events = await collect(w)
    assert isinstance(events[-1], WorkerStopped) and events[-1].messages_dead_lettered == 0
    for dataset in ("windows", "points"):
        a = await export_rows(make_offline_store(batch), "sensors", dataset=dataset)
        b = await export_rows(make_offline_store(stream), "sensors", dataset=dataset)
        assert_same_rows(a, b)
        if features and dataset == "windows":
            assert a.height and a["rpm_max"].drop_nulls().len() and a["status_count_distinct"].max() >= 1


async def test_docs_watch_and_worker_converge_to_the_batch_index(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "samples" / "docs", corpus)
    batch, stream = settings(tmp_path, "batch"), settings(tmp_path, "stream")
    watcher = make_watcher(stream, str(corpus))

    async def step() -> None:
        await build_document_pipeline(batch, str(corpus)).run_async()
        polls = [e async for e in watcher.run(1, asyncio.Event(), once=True)]
        assert polls and (polls[0].added or polls[0].updated or polls[0].deleted)
        async with open_doc_worker(stream, exit_when_idle_seconds=0.8) as worker:
            await collect(worker)
        a, b = await status(batch), await status(stream)
        assert a["fingerprint"] == b["fingerprint"] and b["chunks"] > 0

    await step()
    (corpus / "guides" / "retries.md").unlink()
    edited = corpus / "guides" / "signals.md"
    edited.write_text(edited.read_text() + "\n\nA new paragraph about watermarks.\n")
    await step()
    assert (await status(stream))["documents"] == 5


async def test_worker_stops_on_signal_after_committing_the_batch_in_flight(tmp_path: Path) -> None:
    s = settings(tmp_path, "h")
    stop = asyncio.Event()

    class SlowSink(RecordingSink):
        async def handle(self, batch: list[Delivery]) -> list[Event]:
            stop.set()  # SIGTERM arrives while this batch is being committed
            await asyncio.sleep(0.3)
            return await super().handle(batch)

    sink = SlowSink()
    bus = make_bus(s)
    await bus.open()
    await bus.publish("t", [ce(n) for n in range(12)])
    metadata = make_metadata_store(s)
    await metadata.open()
    options = WorkerOptions(topic="t", group="g", batch_size=4, drain_seconds=5)
    events = await collect(StreamWorker(make_bus(s), sink, metadata, options, stop=stop))
    await metadata.close()
    batches = [e for e in events if isinstance(e, WorkerBatch)]
    assert len(sink.committed) == 4 and len(batches) == 1 and batches[0].acked == 4
    assert isinstance(events[-1], WorkerStopped) and events[-1].reason == "signal"
    assert await bus.pending("t", "g") == 8  # the rest stays on the bus for the next worker


async def test_a_sink_that_is_down_gets_naks_then_the_dlq(tmp_path: Path) -> None:
    s = settings(tmp_path, "h")
    out, _bus = await run_sink(RecordingSink(fail_all=True), [ce(1)], s, exit_when_idle_seconds=4.0)
    dead = [e for e in out if isinstance(e, MessageDeadLettered)]
    assert len(dead) == 1 and dead[0].deliveries == 3 and "sink down" in dead[0].message


@pytest.mark.parametrize("topic", [DOCS_TOPIC])
async def test_doc_event_for_a_foreign_source_is_refused(tmp_path: Path, topic: str) -> None:
    s = settings(tmp_path, "h")
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "samples" / "docs", corpus)
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.md").write_text("do not index")
    bus = make_bus(s)
    await bus.open()
    change = cloudevents.DocChange(source=other.as_uri(), relpath="secret.md")
    body = cloudevents.make_event(
        id="x", source="t", type=cloudevents.DOC_ADDED, data=cloudevents.encode_data(change)
    )
    await bus.publish(topic, [body])
    async with open_doc_worker(s, bus=bus, sources=[str(corpus)], exit_when_idle_seconds=0.5) as worker:
        events = await collect(worker)
    dead = [e for e in events if isinstance(e, MessageDeadLettered)]
    assert len(dead) == 1 and "not one this worker serves" in dead[0].message
    assert (await status(s))["documents"] == 0


class _CountingEmbedder(HashEmbedder):
    """Counts opens and closes: a document worker's batches share one embedder (a local model
    used to load once per batch)."""

    def __init__(self) -> None:
        super().__init__("hash://")
        self.opened = self.closed = self.calls = 0

    async def open(self) -> None:
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    async def embed(self, texts: Any) -> Any:
        self.calls += 1
        return await super().embed(texts)


async def test_a_document_worker_opens_its_embedder_once_for_all_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and builds one pipeline for its source, run over each batch's paths with a run id of
    its own, rather than one pipeline a batch."""
    from headwater import compose

    built: list[str] = []
    build = compose.build_document_pipeline

    def counted(settings: Any, source: str, **kwargs: Any) -> Any:
        built.append(source)
        return build(settings, source, **kwargs)

    monkeypatch.setattr(compose, "build_document_pipeline", counted)
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "samples" / "docs", corpus)
    s = settings(tmp_path, "stream")
    bus = make_bus(s)
    await bus.open()
    watcher = make_watcher(s, str(corpus), bus)
    polls = [e async for e in watcher.run(1, asyncio.Event(), once=True)]
    assert polls[0].added == 6
    embedder = _CountingEmbedder()
    async with open_doc_worker(s, bus=bus, embedder=embedder, batch_size=1, exit_when_idle_seconds=0.5) as w:
        events = await collect(w)
    batches = [e for e in events if isinstance(e, WorkerBatch)]
    assert len(batches) >= 6 and embedder.calls >= 6  # one message a batch, each embedded
    assert (embedder.opened, embedder.closed) == (1, 1)
    assert built == [watcher.source.uri]
    assert len({e.run_id for e in events if isinstance(e, DocumentCompleted)}) == 6
    assert (await status(s))["documents"] == 6


class _Crash(BaseException):
    """Stands in for kill -9 inside one process: nothing after it runs, nothing is acked."""


async def test_signal_worker_crash_before_commit_resumes_in_order(tmp_path: Path) -> None:
    """The batch in flight at a crash comes back after the ack wait, behind newer messages; the
    restarted sink holds the newer ones until it has replayed that batch, so nothing is lost,
    duplicated or reordered (rows equal an uninterrupted run)."""
    from headwater.pipeline.signal_stream import SignalSink

    clean, crashed = settings(tmp_path, "clean"), settings(tmp_path, "crashed")
    spec = resolve_feature_set(clean, "sensors")
    for s in (clean, crashed):
        bus = make_bus(s)
        await bus.open()
        for bodies in signal_messages(EVENTS):
            await bus.publish("signals", bodies)
    async with open_signal_worker(clean, spec, exit_when_idle_seconds=1.0, batch_size=100) as w:
        await collect(w)

    original = SignalSink._commit
    calls = 0

    async def crash_on_fourth(self: SignalSink, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise _Crash
        return await original(self, *args, **kwargs)

    SignalSink._commit = crash_on_fourth  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            async with open_signal_worker(crashed, spec, batch_size=100) as w:
                await collect(w)
    finally:
        SignalSink._commit = original  # type: ignore[method-assign]
    async with open_signal_worker(crashed, spec, exit_when_idle_seconds=1.5, batch_size=100) as w:
        events = await collect(w)
    assert isinstance(events[-1], WorkerStopped) and events[-1].messages_acked > 0
    for dataset in ("windows", "points", "late"):
        a = await export_rows(make_offline_store(clean), "sensors", dataset=dataset)
        b = await export_rows(make_offline_store(crashed), "sensors", dataset=dataset)
        assert_same_rows(a.drop("input_ref", strict=False), b.drop("input_ref", strict=False))


async def test_a_message_that_kills_the_worker_uses_only_its_own_attempts(tmp_path: Path) -> None:
    """Killed mid-batch, the worker's messages come back as suspects: each goes alone, with its
    attempt recorded first, so the killer reaches the DLQ and the innocents beside it commit."""
    s = settings(tmp_path, "h")

    class KillingSink(RecordingSink):
        async def handle(self, batch: list[Delivery]) -> list[Event]:
            if any(d.event is not None and bytes(d.event.data) == b'{"n":2}' for d in batch):
                raise _Crash
            return await super().handle(batch)

    sink = KillingSink()
    bus = make_bus(s)
    await bus.open()
    await bus.publish("t", [ce(n) for n in range(5)])
    metadata = make_metadata_store(s)
    await metadata.open()
    options = WorkerOptions(topic="t", group="g", batch_size=5, max_attempts=3, exit_when_idle_seconds=1.0)
    crashes, events = 0, []
    for _ in range(8):
        try:
            events = await collect(StreamWorker(make_bus(s), sink, metadata, options, attempts=metadata))
            break
        except _Crash:
            crashes += 1
    letters = await metadata.list()
    await metadata.close()
    assert crashes == 4  # the batch once, then the killer alone three times
    assert sorted(sink.committed) == sorted(b'{"n":%d}' % n for n in (0, 1, 3, 4))
    assert [(lt.kind, lt.stage, lt.attempts) for lt in letters] == [("message", "deliver", 5)]
    assert isinstance(events[-1], WorkerStopped) and await bus.pending("t", "g") == 0


async def test_batches_are_traced_when_opentelemetry_is_on(tmp_path: Path, monkeypatch: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    monkeypatch.setenv("HEADWATER_OTEL", "1")
    sink = RecordingSink()
    await run_sink(sink, [ce(n) for n in range(6)], settings(tmp_path, "h"))
    spans = [s for s in exporter.get_finished_spans() if s.name == "headwater.worker.batch"]
    assert sum(int(s.attributes["messages"]) for s in spans) == 6  # type: ignore[index, arg-type]
    assert {s.attributes["topic"] for s in spans} == {"t"}  # type: ignore[index]


async def test_a_bad_event_inside_a_batch_message_is_dead_lettered_alone(tmp_path: Path) -> None:
    """One bad event in a batch message: it alone goes to both DLQs (with its own body and its
    index in the message), the good events beside it are committed, the message is acked. A
    batch body that is not a JSON array is a bad message: dead-lettered whole."""
    batch, stream = settings(tmp_path, "batch", micro_batch_events=100), settings(tmp_path, "stream")
    spec = resolve_feature_set(batch, "sensors")
    async with open_signal_pipeline(batch, EVENTS, spec) as pipeline:
        await pipeline.run_async()
    singles = [body for bodies in signal_messages(EVENTS) for body in bodies]
    bad = (
        b'{"specversion":"1.0","id":"bad-1","source":"t","type":"x","data":'
        b'{"entity_id":"e","event_time":"yesterday","sequence":1,"value":1}}'
    )
    messages = [cloudevents.encode_batch([*singles[:3], bad, *singles[3:10]])]
    messages += [cloudevents.encode_batch(singles[i : i + 10]) for i in range(10, len(singles), 10)]
    messages.insert(2, b'[{"specversion": "1.0",')
    bus = make_bus(stream)
    await bus.open()
    await bus.publish("signals", messages)
    async with open_signal_worker(stream, spec, bus=bus, exit_when_idle_seconds=1.0, batch_size=4) as w:
        events = await collect(w)
    dead = [e for e in events if isinstance(e, MessageDeadLettered)]
    assert [d.position for d in dead] == ["1#3", "3"]
    assert "$.data.event_time" in dead[0].message and "not a CloudEvents batch" in dead[1].message
    assert sum(e.events_rejected for e in events if isinstance(e, WorkerBatch)) == 1
    metadata = make_metadata_store(stream)
    await metadata.open()
    try:
        letters = sorted(await metadata.list(), key=lambda lt: lt.id)
    finally:
        await metadata.close()
    assert [(lt.input_ref, lt.payload) for lt in letters] == [
        ("signals@1#3", bad),
        ("signals@3", b'[{"specversion": "1.0",'),
    ]
    assert [body for body, _ in await bus.dead_letters("signals")] == [bad, b'[{"specversion": "1.0",']
    assert await bus.pending("signals", "features-sensors") == 0
    for dataset in ("windows", "points"):
        a = await export_rows(make_offline_store(batch), "sensors", dataset=dataset)
        b = await export_rows(make_offline_store(stream), "sensors", dataset=dataset)
        assert_same_rows(a, b)


@pytest.mark.parametrize("features", [None, MULTI_FIELD], ids=["value", "multi-field"])
async def test_partitioned_workers_equal_one_backfill_per_partition(
    tmp_path: Path, features: str | None
) -> None:
    """Two partitions, one worker each, on one home: each worker holds whole entities, with its
    partition's own watermark, so the rows equal backfills of each partition's events."""
    batch, stream = settings(tmp_path, "batch", micro_batch_events=100), settings(tmp_path, "stream")
    spec = resolve_feature_set(batch, "sensors", features=features)
    events_file = many_entities(tmp_path)
    lines = events_file.read_text().splitlines()
    for partition in (0, 1):
        part = tmp_path / f"part{partition}.jsonl"
        mine = [line for line in lines if partition_of(entity_of(line), 2) == partition]
        assert mine
        part.write_text("\n".join(mine) + "\n")
        async with open_signal_pipeline(batch, part, spec) as pipeline:
            await pipeline.run_async()
    bus = make_bus(stream)
    await bus.open()
    for partition, bodies, _ in partitioned_messages(events_file, per_message=3, partitions=2):
        await bus.publish(partition_topic("signals", partition, 2), bodies)
    for partition in (0, 1):
        topic = partition_topic("signals", partition, 2)
        async with open_signal_worker(
            stream, spec, bus=bus, topic=topic, exit_when_idle_seconds=1.0, batch_size=30
        ) as w:
            await collect(w)
    for dataset in ("windows", "points"):
        a = await export_rows(make_offline_store(batch), "sensors", dataset=dataset)
        b = await export_rows(make_offline_store(stream), "sensors", dataset=dataset)
        assert_same_rows(a, b)
