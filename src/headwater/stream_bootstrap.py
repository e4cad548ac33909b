"""Composition root for stream mode: Settings → bus + sink → StreamWorker (and the publishers).

The CLI and the tests build workers here, with the same pipelines and stores the batch commands
use: only where work comes from, and how it is acknowledged, differs (DESIGN §1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any, cast

from headwater import registry
from headwater.bootstrap import build_document_pipeline, make_embedder, make_metadata_store, make_source
from headwater.config import Settings
from headwater.events import Event
from headwater.featuresets import FeatureSetSpec
from headwater.pipeline.doc_stream import DOCS_TOPIC, DocumentSink, RunPaths, Watcher
from headwater.pipeline.retry import RetryPolicy
from headwater.pipeline.signal_publish import SIGNALS_TOPIC
from headwater.pipeline.signal_stream import SignalSink
from headwater.pipeline.signals import SignalOptions
from headwater.pipeline.stream import StreamWorker, WorkerOptions
from headwater.ports import DeadLetters, Embedder, StreamBus
from headwater.signals_bootstrap import make_offline_store, make_online_store


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


def make_watcher(settings: Settings, source_url: str, bus: StreamBus | None = None) -> Watcher:
    return Watcher(
        make_source(source_url, settings),
        lambda: make_metadata_store(settings),
        bus or make_bus(settings),
        topic=settings.topic_docs,
        max_file_bytes=settings.max_file_bytes,
    )


@asynccontextmanager
async def open_doc_worker(
    settings: Settings,
    *,
    bus: StreamBus | None = None,
    topic: str = DOCS_TOPIC,
    group: str = "docs",
    sources: list[str] | None = None,
    stop: asyncio.Event | None = None,
    embedder: Embedder | None = None,
    **options: object,
) -> AsyncIterator[StreamWorker]:
    """A document worker. Its embedder (``embedder``, else the configured one) serves every
    batch's pipeline run, opened and closed once here: a local model loads once."""
    metadata = make_metadata_store(settings)
    embedder = embedder or make_embedder(settings)
    await metadata.open()
    await embedder.open()
    try:
        allowed = {make_source(s, settings).uri for s in sources} if sources else None
        yield StreamWorker(
            bus or make_bus(settings),
            DocumentSink(_run_paths(settings, _Lent(embedder)), allowed=allowed),
            metadata,
            worker_options(settings, topic, group, **options),
            attempts=metadata,
            stop=stop,
        )
    finally:
        await embedder.close()
        await metadata.close()


def _run_paths(settings: Settings, embedder: Embedder) -> RunPaths:
    async def run(source: str, relpaths: set[str]) -> AsyncGenerator[Event, None]:
        pipeline = build_document_pipeline(settings, source, only=relpaths, embedder=embedder)
        async with aclosing(pipeline.stream_events()) as events:  # closed with the sink's view
            async for event in events:
                yield event

    return run


class _Lent:
    """The worker's embedder as each batch's pipeline sees it: everything passes through but
    ``open`` and ``close``, which the worker does once. A pipeline run opens and closes its
    embedder; with a local model that was a model load per batch (seconds each)."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


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
    # Dead-lettered records of signal files go back through their input (both callers of this
    # function, ``dlq replay`` and the API's replay job, replay every kind of letter).
    from headwater.signals_bootstrap import replay_signals  # lazily: polars is not needed otherwise

    await replay_signals(settings, letter_ids)
    return len(letters)
