"""Rendering of pipeline events for people and scripts: a rich progress bar on a terminal, a
plain progress line every few seconds elsewhere (CI logs, pipes), or one JSON event a line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from headwater.events import AdapterStateChange, Event, ExpectationsFailed, to_json

PLAIN_INTERVAL_SECONDS = 10.0
JSON_FLUSH_SECONDS = 0.05
JSON_FLUSH_LINES = 4096


class Tally:
    """How far a run got, for the line an interrupted command ends with."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def observe(self, event: Any) -> None:
        kind = type(event).__name__
        if kind in {"DocumentCompleted", "DocumentFailed", "DocumentDeleted"} or (
            kind == "DocumentSkipped" and event.reason == "unchanged"
        ):
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def describe(self) -> str:
        c = self.counts
        parts = [
            f"{c.get('DocumentCompleted', 0)} document(s) indexed",
            f"{c.get('DocumentSkipped', 0)} unchanged",
            f"{c.get('DocumentFailed', 0)} failed",
        ]
        if c.get("DocumentDeleted"):
            parts.append(f"{c['DocumentDeleted']} deleted")
        return ", ".join(parts) + " before the stop"


async def _tallied(events: AsyncIterator[Any], tally: Tally) -> AsyncIterator[Any]:
    try:
        async for event in events:
            tally.observe(event)
            yield event
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def render_events(
    events: AsyncIterator[Any],
    *,
    json_lines: bool,
    console: Console,
    label: str = "ingest",
    tally: Tally | None = None,
) -> Any:
    """Consume ``events`` and return the last one (the RunCompleted)."""
    if tally is not None:
        events = _tallied(events, tally)
    if json_lines:
        return await _render_json(events)
    if console.is_interactive:
        return await _render_bar(events, console, label)
    return await _render_plain(events, console, label)


async def _render_json(events: AsyncIterator[Any]) -> Any:
    """One JSON event a line, written in blocks that go out within ``JSON_FLUSH_SECONDS``: a
    script reading the stream live is never far behind, and an unbuffered stdout
    (PYTHONUNBUFFERED, common in containers) is not one write call per line (100k of them for
    a no-change re-run of 100k files)."""
    last = None
    out = sys.stdout.buffer
    lines: list[bytes] = []
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def flush() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
            timer = None
        out.write(b"".join(lines))
        out.flush()
        lines.clear()

    try:
        async for event in events:
            lines.append(to_json(event) + b"\n")
            last = event
            if len(lines) >= JSON_FLUSH_LINES:
                flush()
            elif timer is None:
                timer = loop.call_later(JSON_FLUSH_SECONDS, flush)
    finally:
        flush()
    return last


def _line_for(event: Event) -> str | None:
    kind = type(event).__name__
    if isinstance(event, AdapterStateChange):
        return adapter_state_line(event)
    if kind == "WaitingForHome":
        return (
            f"[yellow]waiting:[/] the home {escape(event.home)} is being written by "  # type: ignore[attr-defined]
            f"{escape(event.holder)}; this run starts when it is done "  # type: ignore[attr-defined]
            "(Ctrl-C to give up; --no-wait exits at once instead)"
        )
    if kind.endswith("Failed"):
        return f"[red]failed[/] {getattr(event, 'uri', '')}: {getattr(event, 'message', '')}"
    return None


def adapter_state_line(event: AdapterStateChange) -> str:
    healthy = event.state in ("closed", "regained")
    colour = "green" if healthy else "yellow"
    detail = f": {escape(event.detail)}" if event.detail else ""
    return f"[{colour}]{event.adapter} {escape(event.name)} {event.state}[/]{detail}"


async def _render_bar(events: AsyncIterator[Any], console: Console, label: str) -> Any:
    last = None
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta {task.fields[eta]}"),
        TextColumn("[dim]{task.fields[rates]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None, rates="", eta=_clock(None))
        async for event in events:
            last = event
            if (line := _line_for(event)) is not None:
                console.print(line)
            done = _done_count(event)
            if done is not None:
                eta = _clock(event.eta_seconds)
                bar.update(task, completed=done[0], total=done[1], rates=_rates(event), eta=eta)
            elif type(event).__name__ in {"DocumentCompleted", "DocumentSkipped", "DocumentFailed"}:
                bar.advance(task)
    return last


async def _render_plain(events: AsyncIterator[Any], console: Console, label: str) -> Any:
    last = None
    shown = time.monotonic()
    async for event in events:
        last = event
        if (line := _line_for(event)) is not None:
            console.print(line)
        done = _done_count(event)
        if done is not None and time.monotonic() - shown >= PLAIN_INTERVAL_SECONDS:
            shown = time.monotonic()
            eta = getattr(event, "eta_seconds", None)
            total = "?" if done[1] is None else str(done[1])
            console.print(
                f"{label}: {done[0]}/{total} done"
                + (f", eta {eta:.0f}s" if eta is not None else "")
                + f" ({_rates(event)})"
            )
    return last


def expectations_line(event: ExpectationsFailed) -> str:
    """One line per batch: ``expectations failed (batch 0): temp max 2 dlq, humidity not_null 1 warn;
    2 dead-lettered`` (and how old a stale batch's newest event was)."""
    parts = [f"{f.field} {f.expectation} {f.count} {f.on_fail}" for f in event.failures]
    line = f"expectations failed (batch {event.batch}): {', '.join(parts)}"
    if event.dead_lettered:
        line += f"; {event.dead_lettered} dead-lettered"
    if event.newest_event_age_ms is not None:
        line += f"; newest event {event.newest_event_age_ms / 1000:.1f}s old"
    return line


def _done_count(event: Any) -> tuple[int, int | None] | None:
    if type(event).__name__ != "BatchProgress":
        return None
    # While the listing runs ahead, the files listed so far are the total (it only grows).
    total = event.estimated_total if event.estimated_total is not None else (event.listed or None)
    return event.completed + event.failed + event.skipped, total


def _clock(seconds: float | None) -> str:
    """The run's own ETA (remaining documents at the rate so far), as rich draws times."""
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _rates(event: Any) -> str:
    elapsed = max(event.elapsed_seconds, 1e-3)
    return (
        f"{event.completed / elapsed:.0f} docs/s, {event.chunks_embedded / elapsed:.0f} chunks/s, "
        f"{event.chunks_embedded} embedded, {event.failed} failed"
    )


def summary_lines(final: Any) -> list[str]:
    """`key: value` pairs of the final event, for people."""
    fields = [f for f in final.__struct_fields__ if f not in {"version", "run_id"}]
    return [f"{f.replace('_', ' ')}: {getattr(final, f)}" for f in fields]
