"""Held late events (policy ``hold``): what is held (``features late``), and applying it (``release``).

A backfill or a stream worker under ``hold`` writes each late event to the offline ``late``
dataset, one row per window it missed (``policy = "hold"``), and leaves the emitted rows as
``drop`` would. A release applies them as ``correct`` would have (``stages/release.py``), in
this crash-safe, idempotent order, under the feature set's writer lock (the one a backfill holds):

1. Release number n = 1 + the highest number in the ``released`` marker dataset; the held set =
   the ``hold`` late rows whose (version, content_hash, window_ms, window_start_ms) no marker has.
2. The merge base = the latest row per key of the ``windows`` dataset, leaving out the part
   ``release-n`` itself (a retry after a crash must not merge its own earlier attempt).
3. The revised rows are written to ``windows`` as part ``release-n`` (replacing an earlier attempt),
4. upserted into the online store (one transaction, no checkpoint),
5. and the marker ``released/feature_set=NAME/date=D/release-n.parquet`` is written: one file,
   atomically (``os.replace``), listing every released (event, window) pair.

A crash before 5 leaves no marker n: the retry takes number n again and recomputes over the same
held set (or a larger one, if events were held meanwhile: a superset of keys, so its part
replaces the earlier attempt's whole). After 5, the events are no longer held: releasing again
finds nothing and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import polars as pl

from headwater.compose import make_offline_store, open_online_store, resolve_feature_set
from headwater.config import Settings
from headwater.errors import ConfigError
from headwater.featuresets import FeatureSetSpec
from headwater.homelock import feature_set_lock, home_lock
from headwater.models import BatchCommit, Dataset
from headwater.pipeline.faults import crash_point
from headwater.pipeline.signal_commit import online_rows, with_date
from headwater.ports import OfflineFeatureStore
from headwater.stages import release as stage

RELEASED = "released"
"""The offline dataset of released markers (``stages.release.MARKER_COLUMNS``), one part a release."""


class HeldSet(msgspec.Struct, frozen=True, kw_only=True):
    """``features late``: the held set of a feature set, its size and its oldest event."""

    feature_set: str
    held_events: int
    held_windows: int
    held_rows: int
    oldest: dict[str, Any] | None
    oldest_event_time: str | None
    released_events: int
    releases: int
    events: list[dict[str, Any]]


class Released(msgspec.Struct, frozen=True, kw_only=True):
    """``features release``: what one release applied (``release`` 0 when nothing was held)."""

    feature_set: str
    release: int
    events_released: int
    windows_revised: int


def release_part(number: int) -> str:
    return f"release-{number:06d}"


async def _held(offline: OfflineFeatureStore, feature_set: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(held rows, released markers) of a feature set."""
    late = await offline.read(Dataset.late, feature_set)
    markers = await offline.read(RELEASED, feature_set)
    return stage.held_rows(late, markers), markers


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def held_set(settings: Settings, feature_set: str | None = None, *, limit: int = 20) -> HeldSet:
    """What is held for ``feature_set`` (Settings.feature_set if None): a reader, it takes no lock."""
    name = feature_set or settings.feature_set
    held, markers = await _held(make_offline_store(settings), name)
    info = stage.summary(held)
    oldest = info["oldest"]
    shown = held.head(limit).drop("_part", "date", strict=False).to_dicts() if held.height else []
    released = markers.select("version", "content_hash").unique().height if markers.height else 0
    return HeldSet(
        feature_set=name,
        held_events=info["held_events"],
        held_windows=info["held_windows"],
        held_rows=info["held_rows"],
        oldest=oldest,
        oldest_event_time=_iso(oldest["event_time"]) if oldest else None,
        released_events=released,
        releases=int(markers["release"].max()) if markers.height else 0,  # type: ignore[arg-type]
        events=shown,
    )


async def release(settings: Settings, feature_set: str | None = None) -> Released:
    """Apply every held event of ``feature_set`` (see the module docstring for the order)."""
    spec = resolve_feature_set(settings, feature_set)
    async with home_lock(settings.home, feature_set_lock(spec.name), wait=settings.wait_for_home):
        return await _release(settings, spec.name, spec)


_EVENT_COLUMNS = frozenset(
    {
        "entity_id", "feature_set", "version", "event_time", "sequence", "extra", "row", "window_ms",
        "window_start_ms", "watermark_ms", "policy", "reason", "input_ref", "content_hash", "date", "_part",
    }
)  # fmt: skip


def _check_declaration(name: str, spec: FeatureSetSpec, held: pl.DataFrame, windows: pl.DataFrame) -> None:
    """A release merges into rows computed under some declaration: the one it resolves now must
    be that one (a feature set declared with flags on ``ingest signals`` is not remembered)."""
    missing = [c for c in spec.window_columns if windows.height and c not in windows.columns]
    missing += [f.name for f in spec.features if f.name not in held.columns]
    if not missing:
        return
    found = ", ".join(c for c in held.columns if c not in _EVENT_COLUMNS) or "unknown"
    reads = ", ".join(f.name for f in spec.features)
    msg = (
        f"feature set {name!r}: its held events and rows were computed for the fields {found}, and this "
        f"declaration reads {reads}: declare it in headwater.toml ([feature_sets.{name}], as the ingest "
        "had it) and release again"
    )
    raise ConfigError(msg)


async def _release(settings: Settings, name: str, spec: FeatureSetSpec) -> Released:
    offline = make_offline_store(settings)
    held, markers = await _held(offline, name)
    number = int(markers["release"].max()) + 1 if markers.height else 1  # type: ignore[arg-type]
    if held.height == 0:
        return Released(feature_set=name, release=0, events_released=0, windows_revised=0)
    part = release_part(number)
    windows = await offline.read(Dataset.windows, name)
    if windows.height:
        windows = windows.filter(pl.col("_part") != f"{part}.parquet")
    _check_declaration(name, spec, held, windows)
    revised = stage.release_rows(held, stage.latest_rows(windows), spec)
    await offline.write(Dataset.windows, name, part, with_date(revised, "window_start_ms"))
    crash_point("release_after_windows")
    async with open_online_store(settings) as online:
        rows = online_rows(revised, spec)
        await online.commit(
            BatchCommit(
                scope=f"release-{name}",
                batch_no=number,
                online_rows=rows,
                online_points=[],
                invalid_rows=[],
                checkpoint=None,
            )
        )
    crash_point("release_after_online")
    marker = stage.marker_rows(held, number)
    day = int(marker["event_time"].min()) // 86_400_000  # type: ignore[arg-type]
    # One date for the whole marker: one file, so it appears atomically or not at all.
    await offline.write(RELEASED, name, part, marker.with_columns(pl.lit(day, dtype=pl.Int32).alias("date")))
    events = held.select("version", "content_hash").unique().height
    return Released(feature_set=name, release=number, events_released=events, windows_revised=revised.height)
