"""What each kind of job runs: a ``Runner`` per kind, built from the composition root."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from headwater.compose import build_document_pipeline, open_signal_pipeline, resolve_feature_set
from headwater.config import Settings
from headwater.events import Event
from headwater.jobs.service import Runner
from headwater.models import Job
from headwater.ops.dead_letters import claim_replays, replay_messages


def runners(settings: Settings) -> dict[str, Runner]:
    """Every kind ``states.REQUIRED_SPEC`` knows, so a validated job always has a runner."""
    return {
        "docs": docs_runner(settings),
        "replay": replay_runner(settings),
        "signals": signals_runner(settings),
    }


def docs_runner(settings: Settings) -> Runner:
    def run(job: Job) -> AsyncIterator[Event]:
        return build_document_pipeline(settings, str(job.spec["source"])).stream_events()

    return run


def signals_runner(settings: Settings) -> Runner:
    """A backfill of ``source`` into ``feature_set`` (declared in headwater.toml, else the
    defaults), exactly as ``ingest signals`` runs it: checkpointed, so a paused or interrupted
    job resumes where it stopped."""

    async def run(job: Job) -> AsyncIterator[Event]:
        spec = resolve_feature_set(settings, job.spec.get("feature_set"))
        source = Path(str(job.spec["source"]))
        async with (
            open_signal_pipeline(settings, source, spec) as pipeline,
            contextlib.aclosing(pipeline.stream_events()) as events,
        ):
            async for event in events:
                yield event

    return run


def replay_runner(settings: Settings) -> Runner:
    """Republishes dead-lettered bus messages, then re-runs dead-lettered documents.

    The letters are marked replayed when the run starts: a replay paused midway is finished by
    the next ``ingest`` of its source (the documents stay claimed), not by resuming this job.
    """

    async def run(job: Job) -> AsyncIterator[Event]:
        ids = job.spec.get("ids")
        await replay_messages(settings, ids)
        for source, paths in (await claim_replays(settings, ids)).items():
            pipeline = build_document_pipeline(settings, source, only=paths)
            async with contextlib.aclosing(pipeline.stream_events()) as events:  # see iter_results
                async for event in events:
                    yield event

    return run
