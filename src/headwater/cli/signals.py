"""CLI for signals: ``ingest signals``, ``features get``, ``features export``, ``features late``,
``features release``, ``features feast-repo``.

Rendering: a progress bar on a terminal, a plain line every few seconds elsewhere, ``--json``
one event per line (the ``headwater.events`` encoding, last one ``"type": "RunCompleted"``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import msgspec
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from headwater.cli.app import app, err, ingest_app, out
from headwater.cli.guard import existing_home, run_async, run_guarded
from headwater.cli.options import (
    ComputeOpt,
    FeatureSetOpt,
    FeaturesOpt,
    HomeOpt,
    JsonOpt,
    LatenessOpt,
    LatePolicyOpt,
    NoWaitOpt,
    PointsOpt,
    VersionOpt,
    WindowsOpt,
    feature_set_spec,
)
from headwater.cli.render import expectations_line
from headwater.config import Settings
from headwater.errors import ConfigError, HeadwaterError
from headwater.events import (
    ExpectationsFailed,
    SignalEvent,
    SignalProgress,
    SignalRejected,
    SignalRunCompleted,
    to_json,
)
from headwater.models import Dataset

if TYPE_CHECKING:
    pass


PLAIN_INTERVAL_SECONDS = 5.0


features_app = typer.Typer(no_args_is_help=True, help="Read the feature stores.")


app.add_typer(features_app, name="features")


@ingest_app.command("signals")
def ingest_signals(
    path: Annotated[Path, typer.Argument(help="A file or folder of .jsonl/.json/.csv/.parquet signals")],
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    windows: WindowsOpt = None,
    lateness: LatenessOpt = None,
    late_policy: LatePolicyOpt = None,
    feature_version: VersionOpt = None,
    points: PointsOpt = None,
    features: FeaturesOpt = None,
    batch_events: Annotated[
        int | None, typer.Option(min=1, max=100_000_000, help="Micro-batch size (events)")
    ] = None,
    compute: ComputeOpt = None,
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
            compute=compute,
            index=False,  # signals never touch the document index
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
    elif isinstance(event, ExpectationsFailed):
        err.print(expectations_line(event), markup=False)
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
    from headwater.ops.features import export_rows

    def work() -> int:
        loaded = load_settings(home=home, feature_set=feature_set, index=False)
        settings = feature_set_of(existing_home(loaded))
        frame = run_async(export_rows(make_offline_store(settings), settings.feature_set, dataset=dataset))
        try:
            frame.write_parquet(out_path)
        except OSError as exc:
            msg = f"cannot write {out_path}: {exc.strerror or exc}; give --out a writable file path"
            raise HeadwaterError(msg) from exc
        height: int = frame.height
        return height

    count = run_guarded(work)
    err.print(f"wrote {count} rows to {out_path}")


@features_app.command("feast-repo")
def features_feast_repo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the Feast repository (created)")],
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
) -> None:
    """Write a Feast repository serving the feature set's windows (one FeatureView per window size);
    then `feast apply` and `feast materialize` in that folder. Run it again to refresh its data."""
    from headwater.compose import make_offline_store
    from headwater.config import load_settings
    from headwater.ops.feast_repo import write_feast_repo

    def work() -> dict[str, int]:
        loaded = load_settings(home=home, feature_set=feature_set, index=False)
        settings = feature_set_of(existing_home(loaded))
        try:
            return run_async(write_feast_repo(make_offline_store(settings), settings.feature_set, out_dir))
        except OSError as exc:
            msg = f"cannot write the Feast repository in {out_dir}: {exc.strerror or exc}"
            raise HeadwaterError(msg) from exc

    views = run_guarded(work)
    for view, count in views.items():
        err.print(f"feature view {view}: {count} rows")
    err.print(f"wrote a Feast repository in {out_dir}: cd there, then `feast apply` and `feast materialize`")


@features_app.command("late")
def features_late(
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="Held events to list (oldest first)")] = 20,
    prometheus: Annotated[
        bool, typer.Option("--prometheus", help="Print the held-events gauges (Prometheus text format)")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Late events held under policy ``hold``, not yet released: how many, the oldest, the first few."""
    from headwater.config import load_settings
    from headwater.observability import Metrics
    from headwater.ops.release import HeldSet, held_set

    def work() -> HeldSet:
        loaded = load_settings(home=home, feature_set=feature_set, index=False)
        settings = feature_set_of(existing_home(loaded))
        return run_async(held_set(settings, limit=limit))

    held = run_guarded(work)
    if prometheus:
        metrics = Metrics()
        metrics.set_held_events(held.feature_set, held.held_events, (held.oldest or {}).get("event_time"))
        text = metrics.render()[0].decode()  # just the held gauges, e.g. for a textfile collector
        sys.stdout.write("".join(ln for ln in text.splitlines(keepends=True) if "_signal_held_" in ln))
        return
    if json_out:
        sys.stdout.write(json.dumps(msgspec.to_builtins(held)) + "\n")
        return
    out.print(
        f"{held.feature_set}: {held.held_events} held events in {held.held_windows} windows"
        f" ({held.released_events} released in {held.releases} releases)"
    )
    if held.oldest is not None:
        out.print(
            f"oldest: {held.oldest_event_time} {held.oldest.get('entity_id')} {held.oldest.get('input_ref')}"
        )
    for event in held.events:
        out.print("  ".join(f"{k}={v}" for k, v in event.items() if k not in _HELD_HIDDEN))


_HELD_HIDDEN = frozenset({"feature_set", "watermark_ms", "policy", "reason", "content_hash", "extra", "row"})


@features_app.command("release")
def features_release(
    home: HomeOpt = None,
    feature_set: FeatureSetOpt = None,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Apply the held late events: their windows re-emitted with a higher revision, as ``correct`` would.

    Idempotent: a second release finds nothing held; a crashed one, run again, completes it.
    """
    from headwater.config import load_settings
    from headwater.ops.release import Released, release

    def work() -> Released:
        loaded = load_settings(
            home=home, feature_set=feature_set, index=False, wait_for_home=False if no_wait else None
        )
        settings = feature_set_of(existing_home(loaded))
        return run_async(release(settings))

    done = run_guarded(work)
    if json_out:
        sys.stdout.write(json.dumps(msgspec.to_builtins(done)) + "\n")
        return
    if done.events_released == 0:
        out.print(f"{done.feature_set}: nothing held, nothing released")
        return
    out.print(
        f"{done.feature_set}: release {done.release} applied {done.events_released} held events,"
        f" {done.windows_revised} windows revised"
    )
