"""CLI for stream mode: ``watch``, ``publish signals``, ``worker docs``, ``worker signals``.

Workers stop on SIGTERM/SIGINT: intake stops, the batch in flight gets ``--drain`` seconds to
commit and be acked, the rest is left to redelivery. ``--json`` prints every event, one a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer

from headwater.cli.app import app, err
from headwater.cli.guard import EXIT_SIGNAL_BASE, run_async, run_guarded
from headwater.cli.options import (
    FeatureSetOpt,
    FeaturesOpt,
    HomeOpt,
    JsonOpt,
    LatenessOpt,
    LatePolicyOpt,
    MetadataStoreOpt,
    PointsOpt,
    VectorStoreOpt,
    VersionOpt,
    WindowsOpt,
    duration,
    feature_set_spec,
)
from headwater.cli.render import adapter_state_line, expectations_line
from headwater.config import Settings
from headwater.errors import ConfigError
from headwater.events import (
    AdapterStateChange,
    ChangesPublished,
    DocumentFailed,
    Event,
    ExpectationsFailed,
    MessageDeadLettered,
    MessagesPublished,
    WorkerBatch,
    WorkerStopped,
    to_json,
)

BusOpt = Annotated[
    str | None, typer.Option("--bus", help="nats://… | redis://… | memory:// [env HEADWATER_BUS]")
]
IdleOpt = Annotated[
    float | None,
    typer.Option("--exit-when-idle", min=0, help="Stop after this many seconds without messages"),
]
GroupOpt = Annotated[
    str | None, typer.Option("--group", help="Consumer group (workers sharing it share the load)")
]
MetricsOpt = Annotated[
    int | None,
    typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus /metrics on 127.0.0.1:PORT"),
]
DocsTopicOpt = Annotated[
    str | None,
    typer.Option(help="Topic of document changes \\[env HEADWATER_TOPIC_DOCS or TOPIC_DOCS; default docs]"),
]
SignalsTopicOpt = Annotated[
    str | None,
    typer.Option(help="Topic of signals \\[env HEADWATER_TOPIC_SIGNALS or TOPIC_SIGNALS; default signals]"),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, max=1_000_000, help="Messages per batch [HEADWATER_WORKER_BATCH_SIZE]"
    ),
]

worker_app = typer.Typer(no_args_is_help=True, help="Long-running workers that consume a bus.")
publish_app = typer.Typer(no_args_is_help=True, help="Publish inputs to a bus as CloudEvents.")


def bus_settings(**options: Any) -> Settings:
    """Settings of a command that talks to a bus: the in-process memory bus is for the Python API
    and tests, and a CLI process that published to it would throw the events away."""
    from headwater.config import load_settings
    from headwater.registry import scheme_of

    settings = load_settings(**options)
    if scheme_of(settings.bus) == "memory":
        msg = (
            "no bus given: set --bus (or HEADWATER_BUS, or NATS_URL) to nats://HOST:4222 or "
            "redis://HOST:6379/0 (the memory:// bus lives inside one process: events published "
            "to it from the command line would be thrown away)"
        )
        raise ConfigError(msg)
    return settings


app.add_typer(worker_app, name="worker")
app.add_typer(publish_app, name="publish")


def _seconds(text: str) -> float:
    from headwater.featuresets import parse_duration_ms

    return parse_duration_ms(text) / 1000


def _stop_on_signals() -> asyncio.Event:
    """SIGTERM/SIGINT: stop taking messages and let the batch in flight commit (the run then ends
    normally, exit 0); a second signal exits at once, leaving the rest to redelivery."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            os._exit(EXIT_SIGNAL_BASE + signum)
        err.print(f"stopping ({signal.Signals(signum).name}): committing the batch in flight …")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, handle, sig)
    return stop


async def _render(
    events: AsyncIterator[Event], *, json_lines: bool, every: float = 5.0, metrics_port: int | None = None
) -> WorkerStopped | None:
    """JSON lines, or a plain line per problem and a throughput line every few seconds; with
    ``metrics_port``, every event also feeds Prometheus metrics served on that port."""
    from headwater.observability import Metrics

    metrics = Metrics() if metrics_port is not None else None
    server = metrics.serve_http(metrics_port) if metrics is not None and metrics_port is not None else None
    try:
        return await _show(events, json_lines=json_lines, every=every, metrics=metrics)
    finally:
        if server is not None:
            server.close()


async def _show(
    events: AsyncIterator[Event], *, json_lines: bool, every: float, metrics: Any
) -> WorkerStopped | None:
    final, acked, shown = None, 0, time.monotonic()
    async for event in events:
        if metrics is not None:
            metrics.observe(event)
        if json_lines:
            sys.stdout.buffer.write(to_json(event) + b"\n")
            sys.stdout.buffer.flush()
        elif isinstance(event, MessageDeadLettered):
            err.print(
                f"[red]dead-lettered[/] {event.topic}@{event.position}: {event.error_type}: {event.message}"
            )
        elif isinstance(event, DocumentFailed):
            err.print(f"[red]failed[/] {event.uri} ({event.stage}): {event.message}")
        elif isinstance(event, AdapterStateChange):
            err.print(adapter_state_line(event))
        elif isinstance(event, ExpectationsFailed):
            err.print(expectations_line(event), markup=False)
        elif isinstance(event, ChangesPublished) and (event.added or event.updated or event.deleted):
            err.print(f"published: {event.added} added, {event.updated} updated, {event.deleted} deleted")
        if isinstance(event, WorkerBatch):
            acked += event.acked
            if not json_lines and time.monotonic() - shown >= every:
                shown = time.monotonic()
                err.print(f"worker: {acked:,} messages acked")
        if isinstance(event, WorkerStopped):
            final = event
    return final


@app.command("watch")
def watch(
    path: Annotated[
        str, typer.Argument(help="Folder or source URL to watch (s3://, gs://, az://, https://…/sitemap.xml)")
    ],
    bus: BusOpt = None,
    home: HomeOpt = None,
    interval: Annotated[
        str | None,
        typer.Option(
            parser=duration,
            help="Poll interval, e.g. 5s \\[env HEADWATER_POLL_INTERVAL_SECONDS or SOURCE_POLL_INTERVAL_SEC "
            "(seconds); default 5s]",
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit")] = False,
    topic: DocsTopicOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Poll a folder or bucket (by listing it); publish doc added/updated/deleted events for what the
    index does not have yet, each once."""
    from headwater.compose import make_watcher

    def work() -> None:
        settings = bus_settings(
            home=home,
            bus=bus,
            topic_docs=topic,
            poll_interval_seconds=_seconds(interval) if interval is not None else None,
        )

        async def go() -> None:
            stop = _stop_on_signals()
            watcher = make_watcher(settings, path)
            events = watcher.run(settings.poll_interval_seconds, stop, once=once)
            await _render(events, json_lines=json_out)

        run_async(go())

    run_guarded(work)


@publish_app.command("signals")
def publish_signals(
    path: Annotated[Path, typer.Argument(help="A file or folder (JSONL, CSV, Parquet), as ingest takes")],
    bus: BusOpt = None,
    topic: SignalsTopicOpt = None,
    per_message: Annotated[
        int,
        typer.Option(
            "--events-per-message",
            min=1,
            max=10_000,
            help="Events per bus message (>1: CloudEvents JSON batch format; far fewer messages to "
            "store and ack, for high rates)",
        ),
    ] = 1,
    partitions: Annotated[
        int,
        typer.Option(
            min=1,
            max=1024,
            help="Route events by a hash of entity_id to TOPIC.p0 … TOPIC.p<N-1>, one worker each",
        ),
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Publish each line as a CloudEvent (deterministic ids: publishing twice is a harmless replay)."""
    from headwater.compose import make_bus
    from headwater.pipeline.signal_publish import publish_signals as publish

    def work() -> MessagesPublished:
        settings = bus_settings(bus=bus, topic_signals=topic)
        started = time.monotonic()
        messages, events = run_async(
            publish(
                make_bus(settings),
                path,
                settings.topic_signals,
                per_message=per_message,
                partitions=partitions,
            )
        )
        return MessagesPublished(
            topic=settings.topic_signals,
            messages=messages,
            events=events,
            elapsed_seconds=round(time.monotonic() - started, 3),
        )

    event = run_guarded(work)
    if json_out:
        sys.stdout.buffer.write(to_json(event) + b"\n")
    else:
        err.print(
            f"published {event.events:,} events in {event.messages:,} messages to {event.topic} "
            f"in {event.elapsed_seconds:.1f}s"
        )


@worker_app.command("docs")
def worker_docs(
    bus: BusOpt = None,
    home: HomeOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Documents prepared/embedded at once")
    ] = None,
    group: GroupOpt = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", help="Only accept events for this source (repeatable)")
    ] = None,
    topic: DocsTopicOpt = None,
    batch_size: BatchOpt = None,
    exit_when_idle: IdleOpt = None,
    metrics_port: MetricsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Index the documents named by change events (from ``headwater watch``) as they arrive."""
    from headwater.compose import open_doc_worker

    def work() -> WorkerStopped | None:
        settings = bus_settings(
            home=home,
            bus=bus,
            vector_store=vector_store,
            metadata_store=metadata_store,
            concurrency=concurrency,
            worker_batch_size=batch_size,
            topic_docs=topic,
        )

        async def go() -> WorkerStopped | None:
            stop = _stop_on_signals()
            async with open_doc_worker(
                settings,
                topic=settings.topic_docs,
                group=group or "docs",
                sources=source,
                stop=stop,
                exit_when_idle_seconds=exit_when_idle,
            ) as worker:
                return await _render(worker.stream_events(), json_lines=json_out, metrics_port=metrics_port)

        return run_async(go())

    _summary(run_guarded(work), json_out)


@worker_app.command("signals")
def worker_signals(
    bus: BusOpt = None,
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    windows: WindowsOpt = None,
    lateness: LatenessOpt = None,
    late_policy: LatePolicyOpt = None,
    feature_version: VersionOpt = None,
    points: PointsOpt = None,
    features: FeaturesOpt = None,
    topic: SignalsTopicOpt = None,
    group: GroupOpt = None,
    batch_size: BatchOpt = None,
    idle_timeout: Annotated[
        str | None,
        typer.Option(parser=duration, help="Close open windows after this long without messages, e.g. 30s"),
    ] = None,
    exit_when_idle: IdleOpt = None,
    metrics_port: MetricsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Keep a feature set up to date from a topic: the backfill's engine, watermark moved by events."""
    from headwater.compose import open_signal_worker

    def work() -> WorkerStopped | None:
        settings = bus_settings(
            home=home,
            bus=bus,
            feature_set=feature_set,
            worker_batch_size=batch_size,
            idle_timeout_seconds=_seconds(idle_timeout) if idle_timeout else None,
            topic_signals=topic,
            feature_set_version=feature_version,
        )
        spec = feature_set_spec(
            settings,
            feature_set,
            windows=windows,
            lateness=lateness,
            late_policy=late_policy,
            points=points,
            features=features,
        )

        async def go() -> WorkerStopped | None:
            stop = _stop_on_signals()
            async with open_signal_worker(
                settings,
                spec,
                topic=settings.topic_signals,
                group=group,
                stop=stop,
                exit_when_idle_seconds=exit_when_idle,
            ) as worker:
                return await _render(worker.stream_events(), json_lines=json_out, metrics_port=metrics_port)

        return run_async(go())

    _summary(run_guarded(work), json_out)


def _summary(final: WorkerStopped | None, json_out: bool) -> None:
    if final is not None and not json_out:
        with contextlib.suppress(BrokenPipeError):
            err.print(
                f"worker stopped ({final.reason}): {final.messages_acked:,} messages acked, "
                f"{final.messages_dead_lettered} dead-lettered, {final.batches} batches, "
                f"{final.elapsed_seconds:.1f}s"
            )
