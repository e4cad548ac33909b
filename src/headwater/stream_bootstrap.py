"""Composition root for stream mode: Settings → bus + sink → StreamWorker (and the publishers).

The CLI and the tests build workers here, with the same pipelines and stores the batch commands
use: only where work comes from, and how it is acknowledged, differs (DESIGN §1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import cast

import msgspec

from headwater import registry
from headwater.bootstrap import make_metadata_store
from headwater.config import Settings
from headwater.featuresets import FeatureSetSpec
from headwater.models import sha256_hex
from headwater.pipeline.doc_stream import DOCS_TOPIC, DocumentSink
from headwater.pipeline.engine import RetryPolicy
from headwater.pipeline.signal_stream import SignalSink
from headwater.pipeline.signals import SignalOptions
from headwater.pipeline.stream import StreamWorker, WorkerOptions
from headwater.ports import DeadLetters, StreamBus
from headwater.signals_bootstrap import make_offline_store, make_online_store
from headwater.stages import cloudevents

SIGNALS_TOPIC = "signals"


def make_bus(settings: Settings, url: str | None = None) -> StreamBus:
    return cast(
        StreamBus, registry.create("bus", url or settings.bus, ack_wait_seconds=settings.ack_wait_seconds)
    )


def worker_options(settings: Settings, topic: str, group: str, **overrides: object) -> WorkerOptions:
    values: dict[str, object] = {
        "topic": topic,
        "group": group,
        "batch_size": settings.worker_batch_size,
        "max_attempts": settings.max_attempts,
        "idle_timeout_seconds": settings.idle_timeout_seconds,
        "drain_seconds": settings.drain_seconds,
        "ack_wait_seconds": settings.ack_wait_seconds,
        "retry": RetryPolicy(
            settings.retry_attempts, settings.retry_initial_seconds, settings.retry_max_seconds
        ),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return WorkerOptions(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def open_doc_worker(
    settings: Settings,
    *,
    bus: StreamBus | None = None,
    topic: str = DOCS_TOPIC,
    group: str = "docs",
    sources: list[str] | None = None,
    stop: asyncio.Event | None = None,
    **options: object,
) -> AsyncIterator[StreamWorker]:
    metadata = make_metadata_store(settings)
    await metadata.open()
    try:
        yield StreamWorker(
            bus or make_bus(settings),
            DocumentSink(settings, sources=sources),
            metadata,
            worker_options(settings, topic, group, **options),
            attempts=metadata,
            stop=stop,
        )
    finally:
        await metadata.close()


@asynccontextmanager
async def open_signal_worker(
    settings: Settings,
    spec: FeatureSetSpec,
    *,
    bus: StreamBus | None = None,
    topic: str = SIGNALS_TOPIC,
    group: str | None = None,
    stop: asyncio.Event | None = None,
    **options: object,
) -> AsyncIterator[StreamWorker]:
    """Signals keep delivery order: a failed batch stops the worker rather than being nak'ed."""
    group = group or f"features-{spec.name}"
    async with AsyncExitStack() as stack:
        online = make_online_store(settings)
        await online.open()
        stack.push_async_callback(online.close)
        metadata = make_metadata_store(settings)
        await metadata.open()
        stack.push_async_callback(metadata.close)
        sink = SignalSink(
            spec=spec,
            online=online,
            offline=make_offline_store(settings),
            topic=topic,
            group=group,
            options=SignalOptions(
                max_future_ms=settings.max_future_ms, max_record_bytes=settings.max_payload_bytes
            ),
            recovery_seconds=2 * settings.ack_wait_seconds + 10,
        )
        yield StreamWorker(
            bus or make_bus(settings),
            sink,
            cast(DeadLetters, metadata),
            worker_options(settings, topic, group, ordered=True, decode_envelopes=False, **options),
            stop=stop,
        )


def signal_messages(path: Path, batch: int = 1000, per_message: int = 1) -> Iterator[list[bytes]]:
    """A JSONL file as CloudEvents, one per line (lines that already are CloudEvents pass as they are),
    in lists of ``batch`` messages. With ``per_message`` > 1, consecutive events share a message in
    the CloudEvents JSON batch format: one bus message (one append, one ack) per N events.

    Ids are deterministic (file name, line number, bytes), so publishing the same file twice is
    a redelivery, which the worker's CloudEvent dedup discards.
    """
    source = f"headwater.publish:{path.name}"
    out: list[bytes] = []
    group: list[bytes] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            group.append(_as_cloudevent(line, source, number))
            if len(group) < per_message:
                continue
            out.append(group[0] if per_message == 1 else cloudevents.encode_batch(group))
            group = []
            if len(out) >= batch:
                yield out
                out = []
    if group:
        out.append(group[0] if per_message == 1 else cloudevents.encode_batch(group))
    if out:
        yield out


def _as_cloudevent(line: bytes, source: str, number: int) -> bytes:
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        value = None
        data = msgspec.json.encode(line.decode("utf-8", "replace"))  # kept, so the DLQ shows it
    else:
        if isinstance(value, dict) and "specversion" in value:
            return line
        data = line
    event_id = sha256_hex(b"%d\x00" % number + line)[:32]
    return cloudevents.make_event(id=event_id, source=source, type=cloudevents.SIGNAL, data=data)


async def publish_signals(
    bus: StreamBus, path: Path, topic: str = SIGNALS_TOPIC, per_message: int = 1
) -> tuple[int, int]:
    """Returns (messages, events) published."""
    await bus.open()
    messages = events = 0
    try:
        for bodies in signal_messages(path, batch=max(1, 1000 // per_message), per_message=per_message):
            await bus.publish(topic, bodies)
            messages += len(bodies)
            events += sum(_events_in(body) for body in bodies) if per_message > 1 else len(bodies)
    finally:
        await bus.close()
    return messages, events


def _events_in(body: bytes) -> int:
    return len(cloudevents.split_batch(body)) if cloudevents.is_batch(body) else 1


async def replay_messages(
    settings: Settings, letter_ids: list[int] | None, bus_url: str | None = None
) -> int:
    """Publish dead-lettered bus messages again, to the topic they came from, then mark them
    replayed (a message that fails again gets a new entry). Returns how many were published."""
    metadata = make_metadata_store(settings)
    await metadata.open()
    try:
        letters = [
            lt
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "message" and lt.payload is not None and (letter_ids is None or lt.id in letter_ids)
        ]
        by_topic: dict[str, list[bytes]] = {}
        for letter in letters:
            by_topic.setdefault(letter.input_ref.rsplit("@", 1)[0], []).append(letter.payload or b"")
        if by_topic:
            bus = make_bus(settings, bus_url)
            await bus.open()
            try:
                for topic, bodies in by_topic.items():
                    await bus.publish(topic, bodies)
            finally:
                await bus.close()
        await metadata.mark_replayed([lt.id for lt in letters])
    finally:
        await metadata.close()
    return len(letters)
