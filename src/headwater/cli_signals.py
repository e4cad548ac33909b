"""CLI for signals: ``ingest signals``, ``features get``, ``features export``.

``register(app)`` attaches the commands to the main ``headwater`` app (``cli.py`` calls it).
Rendering: a progress bar on a terminal, a plain line every few seconds elsewhere, ``--json``
one event per line (the ``headwater.events`` encoding, last one ``"type": "RunCompleted"``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from headwater.cli_guard import existing_home, run_async, run_guarded
from headwater.config import Settings
from headwater.errors import ConfigError, HeadwaterError
from headwater.events import SignalEvent, SignalProgress, SignalRejected, SignalRunCompleted, to_json

if TYPE_CHECKING:
    from headwater.featuresets import FeatureSetSpec

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="State folder [env HEADWATER_HOME]")]
FeatureSetOpt = Annotated[
    str | None, typer.Option("--feature-set", help="Feature set name [env HEADWATER_FEATURE_SET]")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
PLAIN_INTERVAL_SECONDS = 5.0


class LatePolicy(StrEnum):
    drop = "drop"
    hold = "hold"
    correct = "correct"


class Dataset(StrEnum):
    windows = "windows"
    points = "points"
    late = "late"


def duration(text: str) -> str:
    """An option's duration (``2s``, ``500ms``), checked while parsing: a bad one is a usage error."""
    from headwater.featuresets import parse_duration_ms

    try:
        parse_duration_ms(text)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


def windows_list(text: str) -> str:
    """``--windows 1s,5s,1m/10s``, each checked while parsing."""
    from headwater.featuresets import parse_window

    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        msg = "no windows given: e.g. 1s,5s,1m or 1m/10s"
        raise typer.BadParameter(msg)
    try:
        for part in parts:
            parse_window(part.strip())
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


WindowsOpt = Annotated[
    str | None,
    typer.Option(
        parser=windows_list, help="Comma-separated: 1s,5s,1m or 1m/10s (sliding) [HEADWATER_WINDOWS]"
    ),
]
LatenessOpt = Annotated[str | None, typer.Option(parser=duration, help="Allowed lateness, e.g. 2s")]
LatePolicyOpt = Annotated[LatePolicy | None, typer.Option(help="What to do with late events")]
MAX_VERSION = 2**31 - 1  # a key column of every store (SQLite's integers end at 2**63 - 1)
VersionOpt = Annotated[
    int | None, typer.Option("--feature-version", min=0, max=MAX_VERSION, help="Feature set version")
]

PointsOpt = Annotated[bool | None, typer.Option("--points/--no-points", help="EWMA and z-score per event")]


def feature_set_spec(
    settings: Settings,
    feature_set: str | None,
    *,
    windows: str | None,
    lateness: str | None,
    late_policy: LatePolicy | None,
    points: bool | None,
) -> FeatureSetSpec:
    """What a backfill and a stream worker compute from the same flags: the declaration (or the
    signal defaults) with the flags on top, so ``ingest signals`` and ``worker signals`` given the
    same options fill the same feature set. The version is the flag, else the environment's,
    else the declared one (``settings.feature_set_version`` already holds that order)."""
    from headwater.compose import resolve_feature_set

    return resolve_feature_set(
        settings,
        feature_set,
        windows=windows,
        lateness=lateness,
        policy=late_policy.value if late_policy is not None else None,
        version=settings.feature_set_version,
        points=points,
    )


features_app = typer.Typer(no_args_is_help=True, help="Read the feature stores.")


def register(app: typer.Typer) -> None:
    """Add ``ingest signals`` to the ``ingest`` group and the ``features`` group to ``app``."""
    ingest = next((g.typer_instance for g in app.registered_groups if g.name == "ingest"), None)
    if ingest is None:
        ingest = typer.Typer(no_args_is_help=True, help="Run an ingestion once (batch).")
        app.add_typer(ingest, name="ingest")
    ingest.command("signals")(ingest_signals)
    app.add_typer(features_app, name="features")


def ingest_signals(
    path: Annotated[Path, typer.Argument(help="A file or folder of .jsonl/.json/.csv/.parquet signals")],
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    windows: WindowsOpt = None,
    lateness: LatenessOpt = None,
    late_policy: LatePolicyOpt = None,
    feature_version: VersionOpt = None,
    points: PointsOpt = None,
    batch_events: Annotated[
        int | None, typer.Option(min=1, max=100_000_000, help="Micro-batch size (events)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Backfill signals into a feature set: dedup, windows under a watermark, online + offline stores."""
    from headwater.compose import open_signal_pipeline
    from headwater.config import load_settings

    def work() -> SignalRunCompleted:
        settings = load_settings(
            home=home,
            feature_set=feature_set,
            micro_batch_events=batch_events,
            feature_set_version=feature_version,
            index=False,  # signals never touch the document index
        )
        spec = feature_set_spec(
            settings, feature_set, windows=windows, lateness=lateness, late_policy=late_policy, points=points
        )

        async def go() -> SignalRunCompleted:
            async with open_signal_pipeline(settings, path, spec) as pipeline:
                return await render(pipeline.stream_events(), json_lines=json_out)

        return run_async(go())

    final = run_guarded(work)
    if not json_out:
        for name in final.__struct_fields__:
            if name not in {"version", "run_id"}:
                out.print(f"{name.replace('_', ' ')}: {getattr(final, name)}")


async def render(events: AsyncIterator[SignalEvent], *, json_lines: bool) -> SignalRunCompleted:
    """Consume the event stream, showing it as JSON lines, a bar, or plain lines; return the final event."""
    final: SignalRunCompleted | None = None
    if json_lines:
        async for event in events:
            sys.stdout.buffer.write(to_json(event) + b"\n")
            sys.stdout.buffer.flush()
            final = event if isinstance(event, SignalRunCompleted) else final
    elif err.is_interactive:
        with Progress(
            TextColumn("[bold]signals"),
            BarColumn(),
            TextColumn("{task.completed:,} events"),
            TimeElapsedColumn(),
            console=err,
        ) as bar:
            task = bar.add_task("signals", total=None)
            async for event in events:
                final = _show(event, final, bar=bar, task=task)
    else:
        shown = 0.0
        async for event in events:
            final = _show(event, final)
            if isinstance(event, SignalProgress) and time.monotonic() - shown >= PLAIN_INTERVAL_SECONDS:
                shown = time.monotonic()
                total = f"/{event.events_total:,}" if event.events_total else ""
                err.print(f"signals: {event.events_seen:,}{total} events, {event.elapsed_seconds:.0f}s")
    if final is None:
        msg = "signal run ended without a RunCompleted event"
        raise RuntimeError(msg)
    return final


def _show(event: SignalEvent, final: SignalRunCompleted | None, *, bar: Any = None, task: Any = None) -> Any:
    if isinstance(event, SignalRejected):
        err.print(f"[red]rejected[/] {event.input_ref} {event.field}: {event.reason}", markup=True)
    elif isinstance(event, SignalProgress) and bar is not None:
        bar.update(task, completed=event.events_seen, total=event.events_total)
    elif isinstance(event, SignalRunCompleted):
        return event
    return final


@features_app.command("get")
def features_get(
    entity_id: Annotated[str, typer.Argument(help="Entity to read")],
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    feature_version: VersionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Latest online rows of an entity: one per window size, plus its latest point features."""
    from headwater.compose import open_online_store
    from headwater.config import load_settings

    def work() -> list[dict[str, Any]]:
        loaded = load_settings(home=home, feature_set=feature_set, index=False)
        settings = feature_set_of(existing_home(loaded))

        async def go() -> list[dict[str, Any]]:
            async with open_online_store(settings) as store:
                return await store.get_latest(entity_id, settings.feature_set, feature_version)

        return run_async(go())

    rows = run_guarded(work)
    if json_out:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    if not rows:
        err.print(f"no features for {entity_id!r}")
        raise typer.Exit(1)
    for row in rows:
        out.print("  ".join(f"{k}={v}" for k, v in row.items()))


def feature_set_of(settings: Settings) -> Settings:
    """The feature set a read command means: the one asked for if the home has it, else the
    home's only one. An unknown name used to answer "wrote 0 rows", and no name meant a set
    called "default" even in a home that has another."""
    root = urlsplit(settings.offline_store_url)
    if root.scheme != "file":
        return settings  # a remote offline store: no cheap listing, the name is taken as given
    known = sorted({p.name.partition("=")[2] for p in Path(root.path).glob("*/feature_set=*") if p.is_dir()})
    asked = "feature_set" in settings.model_fields_set
    if asked and (settings.feature_set in known or not known):
        return settings
    if not asked and len(known) <= 1:
        return settings.model_copy(update={"feature_set": known[0]}) if known else settings
    names = ", ".join(known)
    if asked:
        msg = f"the home {settings.home} has no feature set {settings.feature_set!r} (it has: {names})"
    else:
        msg = f"the home {settings.home} has several feature sets ({names}): pick one with --feature-set"
    raise ConfigError(msg)


@features_app.command("export")
def features_export(
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write")],
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    dataset: Annotated[Dataset, typer.Option(help="Which offline table")] = Dataset.windows,
) -> None:
    """Offline rows; windows: one per (entity_id, feature_set, version, window_ms, window_start_ms)."""
    from headwater.compose import make_offline_store
    from headwater.config import load_settings

    def work() -> int:
        loaded = load_settings(home=home, feature_set=feature_set, index=False)
        settings = feature_set_of(existing_home(loaded))
        frame = run_async(
            export_rows(make_offline_store(settings), settings.feature_set, dataset=dataset.value)
        )
        try:
            frame.write_parquet(out_path)
        except OSError as exc:
            msg = f"cannot write {out_path}: {exc.strerror or exc}; give --out a writable file path"
            raise HeadwaterError(msg) from exc
        height: int = frame.height
        return height

    count = run_guarded(work)
    err.print(f"wrote {count} rows to {out_path}")


EXPORT_KEYS = {  # windows: stages.features.FEATURE_ROW_KEY (imported with polars, when exporting)
    "points": ["entity_id", "feature_set", "version", "event_time", "sequence", "value"],
    "late": [
        "entity_id",
        "feature_set",
        "version",
        "event_time",
        "sequence",
        "value",
        "extra",
        "window_ms",
        "window_start_ms",
    ],
}


async def export_rows(offline: Any, feature_set: str, *, dataset: str = "windows") -> Any:
    """Offline history collapsed to one row per key: the highest revision, then the latest part."""
    frame = await offline.read(dataset, feature_set)
    if frame.height == 0:
        return frame
    from headwater.stages.features import FEATURE_ROW_KEY

    keys = list(FEATURE_ROW_KEY) if dataset == "windows" else EXPORT_KEYS[dataset]
    order = [*keys, "revision", "_part"] if dataset == "windows" else [*keys, "_part"]
    latest = frame.sort(order).unique(subset=keys, keep="last", maintain_order=True)
    return latest.drop("_part").sort(keys)
