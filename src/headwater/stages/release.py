"""Releasing held late events (policy ``hold``): held late rows + the latest window rows → revised rows.

Pure functions, no I/O (``ops/release.py`` reads the stores, writes the result and marks what it
released). The maths is policy ``correct``'s (``stages/features.py``, ``_close``): the held events
of each missed window become one partial (count, sum, mean, M2, min, max, two passes around the
mean), merged with the window's latest row by Chan's formula, and the revision moves exactly as a
correction would move it: a window with a row at revision r and k released events gets r + k, a
window that never had a row gets k - 1. So after a release the rows equal a batch computation over
every deduplicated event, as ``correct`` makes them, and a key's revision only grows.

A held event is identified by (version, content_hash, window_ms, window_start_ms): one late-table
row per (event, window it missed). Copies of one event (the same ``content_hash``) late for one
window count once, as the dedup rule counts them.
"""

from __future__ import annotations

from typing import Any

import msgspec
import polars as pl

from headwater.errors import ConfigError
from headwater.featuresets import FeatureSetSpec
from headwater.stages.features import FEATURE_ROW_KEY, STATE_COLUMN, batch_schema, latest_rows, to_rows
from headwater.stages.partials import KEY, layout, merge_partials, partials

HELD_POLICY = "hold"
HELD_REASON = "window_closed"
"""Late rows a release applies: window rows held under ``hold`` (point-level lateness is not a window)."""
HELD_IDENTITY = ("version", "content_hash", "window_ms", "window_start_ms")
"""One held (event, window) pair; the released-marker rows carry the same columns."""
MARKER_COLUMNS = (*HELD_IDENTITY, "entity_id", "event_time", "release")
"""What the released marker records per released (event, window) pair, and in which release."""


def held_rows(late: pl.DataFrame, released: pl.DataFrame) -> pl.DataFrame:
    """The late-table rows still held: policy ``hold``, a missed window, not in a released marker,
    one row per ``HELD_IDENTITY`` (the first stored copy), sorted by event time."""
    if late.height == 0 or "policy" not in late.columns:
        return pl.DataFrame()
    held = late.filter((pl.col("policy") == HELD_POLICY) & (pl.col("reason") == HELD_REASON))
    held = held.unique(subset=list(HELD_IDENTITY), keep="first", maintain_order=True)
    if released.height and held.height:
        done = released.select(HELD_IDENTITY).cast({"version": pl.Int64})
        held = held.cast({"version": pl.Int64}).join(done, on=list(HELD_IDENTITY), how="anti")
    return held.sort("event_time", "entity_id", "sequence", "window_ms", "window_start_ms")


def release_rows(held: pl.DataFrame, latest: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """The revised window rows (``row_columns(spec)``) for every window a held event missed.

    ``held``: rows of ``held_rows``; ``latest``: the feature set's latest row per key (any
    superset is fine: only the keys held events touch are read). One row per touched key.
    """
    if held.height == 0:
        return to_rows(layout(spec).empty(), spec)
    out = []
    for (version,), group in held.partition_by("version", as_dict=True, maintain_order=True).items():
        versioned = msgspec.structs.replace(spec, version=int(version))
        base = _version_rows(latest, versioned)
        out.append(to_rows(_merge(group, base, versioned), versioned))
    return pl.concat(out, how="vertical").sort(list(FEATURE_ROW_KEY))


def _version_rows(latest: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """The latest rows of one version as partials (the merge base): their ``_state``."""
    schema = layout(spec).schema
    if latest.height == 0:
        return pl.DataFrame(schema=schema)
    rows = latest.filter((pl.col("feature_set") == spec.name) & (pl.col("version") == spec.version))
    if rows.height and (STATE_COLUMN not in rows.columns or rows[STATE_COLUMN].null_count()):
        msg = (
            f"feature set {spec.name!r} version {spec.version}: some window rows were written without "
            'their partials (not under late_policy = "hold"), so held events cannot be merged into '
            "them exactly; re-run the backfill under hold, or bump the version"
        )
        raise ConfigError(msg)
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    base = rows.select(
        pl.col("entity_id"), "window_ms", pl.col("window_start_ms").alias("window_start"), STATE_COLUMN
    )
    return base.unnest(STATE_COLUMN).select(list(schema)).cast(schema)  # type: ignore[arg-type]


def _merge(held: pl.DataFrame, base: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """``correct``'s merge: base rows enter with revision + 1 and the held partials with their
    event count k, so after the merge (minus 1) a revised window has r + k and a new one k - 1."""
    fields = batch_schema(spec.features)
    assigned = held.select(
        pl.col("entity_id").cast(pl.String),
        pl.col("window_ms").cast(pl.Int64),
        pl.col("window_start_ms").cast(pl.Int64).alias("window_start"),
        pl.col("event_time").cast(pl.Int64),
        pl.col("sequence").cast(pl.Int64),
        *(_held_field(held, f.name, fields[f.name]) for f in spec.features),
    )
    fixes = partials(assigned, spec).with_columns(pl.col("n").alias("revision"))
    touched = base.join(fixes.select(KEY), on=KEY, how="semi")
    merged = merge_partials(spec, touched.with_columns(pl.col("revision") + 1), fixes)
    return merged.with_columns(pl.col("revision") - 1)


def _held_field(held: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    """A field's held values (null where the late table has no such column: declared since)."""
    return pl.col(name).cast(dtype) if name in held.columns else pl.lit(None, dtype=dtype).alias(name)


def marker_rows(held: pl.DataFrame, release: int) -> pl.DataFrame:
    """The released marker of ``held`` (``MARKER_COLUMNS``), numbered ``release``."""
    return held.select(
        pl.col("version").cast(pl.Int64),
        pl.col("content_hash").cast(pl.String),
        pl.col("window_ms").cast(pl.Int64),
        pl.col("window_start_ms").cast(pl.Int64),
        pl.col("entity_id").cast(pl.String),
        pl.col("event_time").cast(pl.Int64),
        pl.lit(release, dtype=pl.Int64).alias("release"),
    )


_NOT_THE_EVENT = frozenset(
    {"feature_set", "version", "window_ms", "window_start_ms", "watermark_ms", "policy", "reason"}
    | {"content_hash", "row", "extra", "_part", "date"}
)


def summary(held: pl.DataFrame) -> dict[str, Any]:
    """What ``features late`` shows of a held set: its size and its oldest event."""
    if held.height == 0:
        return {"held_events": 0, "held_windows": 0, "held_rows": 0, "oldest": None}
    oldest = held.sort("event_time", "entity_id", "sequence").row(0, named=True)
    windows = held.select("version", "entity_id", "window_ms", "window_start_ms").unique().height
    return {
        "held_events": held.select("version", "content_hash").unique().height,
        "held_windows": windows,
        "held_rows": held.height,
        "oldest": {k: v for k, v in oldest.items() if k not in _NOT_THE_EVENT},
    }


__all__ = [
    "HELD_IDENTITY",
    "MARKER_COLUMNS",
    "held_rows",
    "latest_rows",
    "marker_rows",
    "release_rows",
    "summary",
]
