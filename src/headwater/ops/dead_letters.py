"""Dead letters, read and replayed: the DLQ's one home above the pipelines (they write letters
through the ``DeadLetters`` port; replaying needs the composition root, to build the runs).

Three kinds of letter, three ways back: a ``document`` is claimed again and re-run through its
source; a ``message`` is published again to the topic it came from; a ``signal`` record goes
back through its input file, whose other records rewrite the same rows (writes are idempotent).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.compose import (
    build_document_pipeline,
    make_bus,
    open_metadata,
    open_signal_pipeline,
    resolve_feature_set,
)
from headwater.config import Settings
from headwater.events import RunCompleted, SignalRejected, SignalRunCompleted
from headwater.models import DeadLetter, make_doc_id

if TYPE_CHECKING:
    from headwater.pipeline.signals import Clock


async def list_letters(
    settings: Settings, *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    async with open_metadata(settings) as metadata:
        return await metadata.list(include_replayed=include_replayed, limit=limit)


async def get_letter(settings: Settings, letter_id: int) -> DeadLetter | None:
    async with open_metadata(settings) as metadata:
        return await metadata.get(letter_id)


async def replay_documents(settings: Settings, letter_ids: list[int] | None) -> list[RunCompleted]:
    """Re-run dead-lettered documents (all open letters when ``letter_ids`` is None)."""
    return [
        await build_document_pipeline(settings, src, only=refs).run_async()
        for src, refs in (await claim_replays(settings, letter_ids)).items()
    ]


async def claim_replays(settings: Settings, letter_ids: list[int] | None) -> dict[str, set[str]]:
    """Mark dead-lettered documents replayed and due again; returns their paths by source.

    Claimed first, so the re-run does not skip them as ``previously_failed``; one that fails
    again gets a new letter.
    """
    async with open_metadata(settings) as metadata:
        letters = [
            lt
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "document" and (letter_ids is None or lt.id in letter_ids)
        ]
        states = {}
        for letter in letters:
            states.update(await metadata.get_documents([make_doc_id(letter.input_ref)]))
        await metadata.claim([(d.doc_id, d.source, d.uri) for d in states.values()])
        await metadata.mark_replayed([lt.id for lt in letters])
    by_source: dict[str, set[str]] = {}
    for letter in letters:
        by_source.setdefault(letter.source, set()).add(letter.input_ref)
    return by_source


async def replay_messages(
    settings: Settings, letter_ids: list[int] | None, bus_url: str | None = None
) -> int:
    """Publish dead-lettered bus messages again, to the topic they came from, then mark them
    replayed (a message that fails again gets a new entry). Returns how many were published."""
    async with open_metadata(settings) as metadata:
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
    # Dead-lettered records of signal files go back through their input (both callers of this
    # function, ``dlq replay`` and the API's replay job, replay every kind of letter).
    await replay_signals(settings, letter_ids)
    return len(letters)


async def replay_signals(
    settings: Settings, letter_ids: list[int] | None, *, clock: Clock | None = None
) -> list[SignalRunCompleted]:
    """Re-ingest the inputs of dead-lettered signal records (all open ones when ``letter_ids`` is
    None): each input file or folder once, into the feature set its letters name, declared as
    ``Settings`` resolves it. The rest of the input is unchanged, so re-reading it rewrites the
    same rows (writes are idempotent) and the fixed records join their windows. A letter whose
    record is rejected again stays open, with the new reason; the others are marked replayed."""
    from headwater.pipeline.signals import parse_letter_source  # lazily: polars only for signals

    async with open_metadata(settings) as metadata:
        letters = [
            lt
            for lt in await metadata.list(limit=1_000_000)
            if lt.kind == "signal" and (letter_ids is None or lt.id in letter_ids)
        ]
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
    async with open_metadata(settings) as metadata:
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
    return finals
