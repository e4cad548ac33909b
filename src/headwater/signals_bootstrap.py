"""Composition root for signals: Settings → feature set → adapters → SignalPipeline.

The CLI, the (future) stream worker and the tests build signal pipelines here, so they share
one wiring. Stores are opened on entry and closed on exit of :func:`open_signal_pipeline`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast

from headwater import registry
from headwater.config import Settings
from headwater.events import SignalRejected, SignalRunCompleted
from headwater.featuresets import FeatureSetSpec, build_feature_set
from headwater.pipeline.signals import (
    Clock,
    SignalOptions,
    SignalPipeline,
    parse_letter_source,
    wall_clock_ms,
)
from headwater.ports import DeadLetters, FeatureStore, OfflineFeatureStore


def resolve_feature_set(settings: Settings, name: str | None = None, **overrides: Any) -> FeatureSetSpec:
    """A ``[feature_sets.NAME]`` declaration, else the signal defaults of Settings; CLI flags win."""
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


def make_online_store(settings: Settings) -> FeatureStore:
    return cast(FeatureStore, registry.create("online_store", settings.online_store_url))


def make_offline_store(settings: Settings) -> OfflineFeatureStore:
    return cast(OfflineFeatureStore, registry.create("offline_store", settings.offline_store_url))


@asynccontextmanager
async def open_signal_pipeline(
    settings: Settings, inputs: Path, spec: FeatureSetSpec, *, clock: Clock = wall_clock_ms, dlq: bool = True
) -> AsyncIterator[SignalPipeline]:
    """A ready pipeline whose stores are open for the duration of the ``async with``."""
    async with AsyncExitStack() as stack:
        online = make_online_store(settings)
        await online.open()
        stack.push_async_callback(online.close)
        dead_letters: DeadLetters | None = None
        if dlq:
            metadata = registry.create("metadata_store", settings.metadata_store_url)
            await metadata.open()
            stack.push_async_callback(metadata.close)
            dead_letters = cast(DeadLetters, metadata)
        options = SignalOptions(
            batch_events=settings.micro_batch_events,
            max_future_ms=settings.max_future_ms,
            max_record_bytes=settings.max_payload_bytes,
            progress_interval_seconds=settings.progress_interval_seconds,
            checkpoint_interval_seconds=settings.checkpoint_interval_seconds,
            home=settings.home,
            wait_for_home=settings.wait_for_home,
        )
        yield SignalPipeline(
            inputs=inputs,
            spec=spec,
            online=online,
            offline=make_offline_store(settings),
            dead_letters=dead_letters,
            options=options,
            clock=clock,
        )


@asynccontextmanager
async def open_online_store(settings: Settings) -> AsyncIterator[FeatureStore]:
    store = make_online_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def replay_signals(
    settings: Settings, letter_ids: list[int] | None, *, clock: Clock = wall_clock_ms
) -> list[SignalRunCompleted]:
    """Re-ingest the inputs of dead-lettered signal records (all open ones when ``letter_ids`` is
    None): each input file or folder once, into the feature set its letters name, declared as
    ``Settings`` resolves it. The rest of the input is unchanged, so re-reading it rewrites the
    same rows (writes are idempotent) and the fixed records join their windows. A letter whose
    record is rejected again stays open, with the new reason; the others are marked replayed."""
    metadata: Any = registry.create("metadata_store", settings.metadata_store_url)
    await metadata.open()
    try:
        letters = [
            lt
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "signal" and (letter_ids is None or lt.id in letter_ids)
        ]
    finally:
        await metadata.close()
    by_run: dict[tuple[Path, str], list[Any]] = {}
    for letter in letters:
        inputs, name = parse_letter_source(letter.source)
        by_run.setdefault((inputs, name or settings.feature_set), []).append(letter)
    finals: list[SignalRunCompleted] = []
    done: list[int] = []
    for (inputs, name), group in by_run.items():
        spec = resolve_feature_set(settings, name)
        rejected: set[str] = set()
        async with open_signal_pipeline(settings, inputs, spec, clock=clock) as pipeline:
            async for event in pipeline.stream_events():
                if isinstance(event, SignalRejected):
                    rejected.add(event.input_ref)
                elif isinstance(event, SignalRunCompleted):
                    finals.append(event)
        done += [lt.id for lt in group if lt.input_ref not in rejected]
    metadata = registry.create("metadata_store", settings.metadata_store_url)
    await metadata.open()
    try:
        # A record rejected for a new reason got a new letter: that one stays open instead.
        newest = max((lt.id for lt in letters), default=0)
        renewed = {
            (lt.source, lt.input_ref)
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "signal" and lt.id > newest
        }
        done += [lt.id for lt in letters if lt.id not in done and (lt.source, lt.input_ref) in renewed]
        if done:
            await metadata.mark_replayed(done)
    finally:
        await metadata.close()
    return finals
