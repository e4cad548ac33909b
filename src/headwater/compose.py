"""The composition root: Settings → registry → adapters → pipelines, workers and services.

Everything that runs (the CLI, the server, the job service, the stream workers, the tests)
builds its adapters and pipelines here, so they all run the same wiring; nothing under
``pipeline/`` or ``stages/`` imports this module: a pipeline is handed its ports. The
functions that open something are async context managers, closing what they opened on exit.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from headwater import registry
from headwater.adapters.spark import spark_master
from headwater.config import Settings
from headwater.events import Event
from headwater.pipeline.documents import DocumentPipeline
from headwater.ports import Embedder, MetadataStore, Source, StreamBus, VectorStore

if TYPE_CHECKING:  # the signal engine (polars) and the job service load only when used
    from headwater.featuresets import FeatureSetSpec
    from headwater.jobs.service import JobService
    from headwater.lineage import Lineage
    from headwater.pipeline.doc_stream import RunPaths, Watcher
    from headwater.pipeline.document_spark import SparkDocumentPipeline
    from headwater.pipeline.signals import Clock, SignalPipeline
    from headwater.pipeline.stream import StreamWorker, WorkerOptions
    from headwater.ports import FeatureStore, JobStore, OfflineFeatureStore

# --- adapters ----------------------------------------------------------------------------------


def make_source(url: str, settings: Settings) -> Source:
    """A source of ``url``; one that takes ``storage_options`` (an object store) gets the
    setting's, for credentials and endpoints the SDK does not find by itself; one that takes a
    ``home`` (the web source keeps its validators there) gets the settings' home."""
    cls = registry.resolve("source", url)
    accepts = inspect.signature(cls).parameters
    options: dict[str, object] = {}
    if settings.storage_options and "storage_options" in accepts:
        options["storage_options"] = settings.storage_options
    if "home" in accepts:
        options["home"] = settings.home
    return cast(Source, cls(url, include=settings.include, exclude=settings.exclude, **options))


def make_lineage(settings: Settings, job: str, *, inputs: list[str], outputs: list[str]) -> Lineage | None:
    """OpenLineage for a run when ``HEADWATER_OPENLINEAGE_URL`` is set, else None."""
    if not settings.openlineage_url:
        return None
    from headwater.lineage import Lineage

    return Lineage(
        settings.openlineage_url,
        job=job,
        inputs=inputs,
        outputs=outputs,
        namespace=settings.openlineage_namespace,
    )


def signal_lineage(settings: Settings, inputs: Path, spec: FeatureSetSpec) -> Lineage | None:
    """A backfill's lineage: the job is the feature set in its home, the input its files."""
    return make_lineage(
        settings,
        f"signals:{settings.home.resolve()}:{spec.name}",
        inputs=[str(inputs.resolve())],
        outputs=[settings.offline_store_url, settings.online_store_url],
    )


def make_embedder(settings: Settings) -> Embedder:
    """The configured embedder; one whose constructor takes a ``preset`` (a rate-limited remote
    embedder) gets ``settings.preset``, so one setting sizes both the pipeline and the limiter."""
    cls = registry.resolve("embedder", settings.embedder)
    takes_preset = settings.preset is not None and "preset" in inspect.signature(cls).parameters
    options = {"preset": settings.preset} if takes_preset else {}
    return cast(Embedder, cls(settings.embedder, **options))


def make_vector_store(settings: Settings) -> VectorStore:
    return cast(VectorStore, registry.create("vector_store", settings.vector_store_url))


def make_metadata_store(settings: Settings) -> MetadataStore:
    return cast(MetadataStore, registry.create("metadata_store", settings.metadata_store_url))


def make_online_store(settings: Settings) -> FeatureStore:
    return cast("FeatureStore", registry.create("online_store", settings.online_store_url))


def make_offline_store(settings: Settings) -> OfflineFeatureStore:
    return cast("OfflineFeatureStore", registry.create("offline_store", settings.offline_store_url))


def make_bus(settings: Settings, url: str | None = None) -> StreamBus:
    return cast(
        StreamBus, registry.create("bus", url or settings.bus, ack_wait_seconds=settings.ack_wait_seconds)
    )


def job_store_url(settings: Settings) -> str:
    """``HEADWATER_JOB_STORE``; by default the metadata store's PostgreSQL schema, else the home's
    ``jobs.db`` (see ``Settings.job_store_url``)."""
    return settings.job_store_url


def make_job_store(settings: Settings) -> JobStore:
    return cast("JobStore", registry.create("job_store", job_store_url(settings)))


@asynccontextmanager
async def open_metadata(settings: Settings) -> AsyncIterator[MetadataStore]:
    """The home's metadata store, open for the ``async with``."""
    store = make_metadata_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_index(settings: Settings) -> AsyncIterator[tuple[MetadataStore, VectorStore, Embedder]]:
    """Metadata, vectors and the embedder that sizes them: what the index operations read."""
    async with open_metadata(settings) as metadata:
        embedder = make_embedder(settings)
        await embedder.open()
        try:
            vectors = make_vector_store(settings)
            await vectors.open(embedder.dimensions)
            try:
                yield metadata, vectors, embedder
            finally:
                await vectors.close()
        finally:
            await embedder.close()


@asynccontextmanager
async def open_online_store(settings: Settings) -> AsyncIterator[FeatureStore]:
    store = make_online_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- documents ---------------------------------------------------------------------------------


def build_document_pipeline(
    settings: Settings,
    source_url: str,
    *,
    only: Collection[str] | None = None,
    embedder_lent: bool = False,
    **overrides: Any,
) -> DocumentPipeline:
    """Wire a document pipeline; ``overrides`` replace adapters (tests inject failing embedders)."""
    source = overrides.get("source") or make_source(source_url, settings)
    return DocumentPipeline(
        source=source,
        embedder=overrides.get("embedder") or make_embedder(settings),
        vectors=overrides.get("vectors") or make_vector_store(settings),
        metadata=overrides.get("metadata") or make_metadata_store(settings),
        settings=settings,
        only=only,
        embedder_lent=embedder_lent,
        lineage=make_lineage(
            settings,
            f"docs:{settings.home.resolve()}",
            inputs=[source.uri],
            outputs=[settings.vector_store_url, settings.metadata_store_url],
        ),
    )


def build_document_backfill(settings: Settings, source_url: str) -> DocumentPipeline | SparkDocumentPipeline:
    """A whole-source run on the configured compute: the local pipeline, or Spark tasks running it
    over partitions of the listing, closed by one local pass (``pipeline.document_spark``)."""
    master = spark_master(settings.compute)
    local = build_document_pipeline(settings, source_url)
    if master is None:
        return local
    from headwater.pipeline.document_spark import SparkDocumentPipeline

    return SparkDocumentPipeline(settings, source_url, local, master)


# --- signals -----------------------------------------------------------------------------------


def resolve_feature_set(settings: Settings, name: str | None = None, **overrides: Any) -> FeatureSetSpec:
    """A ``[feature_sets.NAME]`` declaration, else the signal defaults of Settings; CLI flags win."""
    from headwater.featuresets import build_feature_set

    chosen = name or settings.feature_set
    declared = settings.feature_sets.get(chosen)
    if declared is None:
        declared = {
            "windows": settings.windows,
            "lateness": settings.lateness_ms,
            "policy": settings.late_policy,
            "correct_horizon": settings.correct_horizon_ms,
            "ewma_alpha": settings.ewma_alpha,
        }
    return build_feature_set(chosen, declared, **overrides)


@asynccontextmanager
async def open_signal_pipeline(
    settings: Settings,
    inputs: Path,
    spec: FeatureSetSpec,
    *,
    clock: Clock | None = None,
    dlq: bool = True,
) -> AsyncIterator[SignalPipeline]:
    """A ready pipeline whose stores are open for the duration of the ``async with``."""
    from headwater.pipeline.signals import SignalOptions, SignalPipeline, wall_clock_ms

    async with AsyncExitStack() as stack:
        online = await stack.enter_async_context(open_online_store(settings))
        dead_letters = await stack.enter_async_context(open_metadata(settings)) if dlq else None
        options = SignalOptions(
            batch_events=settings.micro_batch_events,
            max_future_ms=settings.max_future_ms,
            max_record_bytes=settings.max_payload_bytes,
            progress_interval_seconds=settings.progress_interval_seconds,
            checkpoint_interval_seconds=settings.checkpoint_interval_seconds,
            home=settings.home,
            wait_for_home=settings.wait_for_home,
        )
        parts: dict[str, Any] = {
            "inputs": inputs,
            "spec": spec,
            "online": online,
            "offline": make_offline_store(settings),
            "dead_letters": dead_letters,
            "options": options,
            "clock": clock or wall_clock_ms,
            "lineage": signal_lineage(settings, inputs, spec),
        }
        master = spark_master(settings.compute)
        if master is None:
            yield SignalPipeline(**parts)
        else:
            from headwater.pipeline.signal_spark import SparkSignalPipeline

            yield SparkSignalPipeline(master=master, **parts)


# --- stream workers ----------------------------------------------------------------------------


def worker_options(settings: Settings, topic: str, group: str, **overrides: object) -> WorkerOptions:
    from headwater.pipeline.retry import RetryPolicy
    from headwater.pipeline.stream import WorkerOptions

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
    from headwater.pipeline.doc_stream import Watcher

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
    topic: str | None = None,
    group: str = "docs",
    sources: list[str] | None = None,
    stop: asyncio.Event | None = None,
    embedder: Embedder | None = None,
    **options: object,
) -> AsyncIterator[StreamWorker]:
    """A document worker. Its embedder (``embedder``, else the configured one) serves every
    batch's pipeline run, opened and closed once here: a local model loads once."""
    from headwater.pipeline.doc_stream import DOCS_TOPIC, DocumentSink
    from headwater.pipeline.stream import StreamWorker

    embedder = embedder or make_embedder(settings)
    async with open_metadata(settings) as metadata:
        await embedder.open()
        try:
            allowed = {make_source(s, settings).uri for s in sources} if sources else None
            yield StreamWorker(
                bus or make_bus(settings),
                DocumentSink(_run_paths(settings, embedder), allowed=allowed),
                metadata,
                worker_options(settings, topic or DOCS_TOPIC, group, **options),
                attempts=metadata,
                stop=stop,
            )
        finally:
            await embedder.close()


def _run_paths(settings: Settings, embedder: Embedder) -> RunPaths:
    """How a document worker runs a batch: one pipeline per source, built at its first batch
    and run over each batch's paths (its stores are opened and closed by each run; the embedder
    is the worker's, open for all of them)."""
    pipelines: dict[str, DocumentPipeline] = {}

    async def run(source: str, relpaths: set[str]) -> AsyncGenerator[Event, None]:
        if source not in pipelines:
            pipelines[source] = build_document_pipeline(
                settings, source, embedder=embedder, embedder_lent=True
            )
        events = pipelines[source].stream_events(only=relpaths)
        async with aclosing(events):  # closed with the sink's view
            async for event in events:
                yield event

    return run


@asynccontextmanager
async def open_signal_worker(
    settings: Settings,
    spec: FeatureSetSpec,
    *,
    bus: StreamBus | None = None,
    topic: str | None = None,
    group: str | None = None,
    stop: asyncio.Event | None = None,
    **options: object,
) -> AsyncIterator[StreamWorker]:
    """Signals keep delivery order: a failed batch stops the worker rather than being nak'ed."""
    from headwater.pipeline.signal_publish import SIGNALS_TOPIC
    from headwater.pipeline.signal_stream import SignalSink
    from headwater.pipeline.signals import SignalOptions
    from headwater.pipeline.stream import StreamWorker

    topic = topic or SIGNALS_TOPIC
    group = group or f"features-{spec.name}"
    async with AsyncExitStack() as stack:
        online = await stack.enter_async_context(open_online_store(settings))
        metadata = await stack.enter_async_context(open_metadata(settings))
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
            metadata,
            worker_options(settings, topic, group, ordered=True, decode_envelopes=False, **options),
            stop=stop,
        )


# --- jobs --------------------------------------------------------------------------------------


def build_job_service(settings: Settings, *, observers: Sequence[Callable[[Event], None]] = ()) -> JobService:
    """The job service the server and ``headwater jobs`` use, on ``job_store_url``; what
    each job kind runs is in ``headwater.jobs.kinds``."""
    from headwater.jobs.kinds import runners
    from headwater.jobs.service import JobService

    return JobService(
        make_job_store(settings),
        runners(settings),
        max_concurrent=settings.max_concurrent_jobs,
        lease_seconds=settings.job_lease_seconds,
        renew_seconds=settings.job_renew_seconds,
        observers=observers,
    )
