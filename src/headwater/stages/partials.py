"""Mergeable per-window partial aggregates: count, sum, mean, M2 (Σ squared deviations), min, max.

Partials are what the engine keeps for open windows and what makes it exact at any batch size:
each batch's partials are computed with two passes around the group mean, and partials are
combined with Chan's pairwise formula; the variance never goes through the naive sum of squares.
Tumbling windows take a NumPy fast path: after one sort by (entity, time) every window is a
contiguous segment, so the aggregates are ``reduceat`` calls with no hashing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

SortedEvents = tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]
]

KEY = ["entity_id", "window_ms", "window_start"]
PARTIAL_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "window_ms": pl.Int64(),
    "window_start": pl.Int64(),
    "count": pl.Int64(),
    "sum": pl.Float64(),
    "mean": pl.Float64(),
    "m2": pl.Float64(),
    "min": pl.Float64(),
    "max": pl.Float64(),
    "revision": pl.Int64(),
}


def partials(assigned: pl.DataFrame) -> pl.DataFrame:
    """Per-window partial aggregates of raw events; M2 by two passes around the group mean."""
    if assigned.height == 0:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    value = pl.col("value")
    centered = assigned.with_columns(value.mean().over(KEY).alias("_mean")).with_columns(
        ((value - pl.col("_mean")) ** 2).alias("_sq")
    )
    return centered.group_by(KEY).agg(
        pl.len().cast(pl.Int64).alias("count"),
        value.sum().alias("sum"),
        pl.col("_mean").first().alias("mean"),
        pl.col("_sq").sum().alias("m2"),
        value.min().alias("min"),
        value.max().alias("max"),
        pl.lit(0, dtype=pl.Int64).alias("revision"),
    )


def merge_partials(*frames: pl.DataFrame) -> pl.DataFrame:
    """Chan's pairwise merge of partials with unique keys per frame, folded left to right.

    n = n_a + n_b, d = mean_b - mean_a, mean = mean_a + d·n_b/n, M2 = M2_a + M2_b + d²·n_a·n_b/n.
    """
    present = [f for f in frames if f.height]
    if not present:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    merged = present[0]
    for other in present[1:]:
        merged = _merge_two(merged, other)
    return merged


def _merge_two(left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
    joined = left.join(right, on=KEY, how="full", coalesce=True, suffix="_b")
    n_a, n_b = pl.col("count").fill_null(0), pl.col("count_b").fill_null(0)
    n = n_a + n_b
    mean_a = pl.col("mean").fill_null(pl.col("mean_b"))
    mean_b = pl.col("mean_b").fill_null(pl.col("mean"))
    delta = mean_b - mean_a
    return joined.select(
        *KEY,
        n.alias("count"),
        (pl.col("sum").fill_null(0.0) + pl.col("sum_b").fill_null(0.0)).alias("sum"),
        (mean_a + delta * n_b / n).alias("mean"),
        (pl.col("m2").fill_null(0.0) + pl.col("m2_b").fill_null(0.0) + delta * delta * n_a * n_b / n).alias(
            "m2"
        ),
        pl.min_horizontal("min", "min_b").alias("min"),
        pl.max_horizontal("max", "max_b").alias("max"),
        (pl.col("revision").fill_null(0) + pl.col("revision_b").fill_null(0)).alias("revision"),
    )


def tumbling_partials(events: pl.DataFrame, sizes_ms: list[int]) -> pl.DataFrame:
    """On-time partials for tumbling windows of each size (events need ``wm_before``)."""
    if not sizes_ms or events.height == 0:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    codes = events["entity_id"].cast(pl.Categorical).to_physical().to_numpy()
    times = events["event_time"].to_numpy()
    order = _entity_time_order(codes, times)
    codes, times = codes[order], times[order]
    values = events["value"].to_numpy()[order]
    watermarks = events["wm_before"].to_numpy()[order]
    # Each entity is one run of the sorted rows: rows carry their run's number, and the names are
    # gathered once per run (not once per event), then per window from that short list.
    firsts = np.concatenate(([0], np.flatnonzero(codes[1:] != codes[:-1]) + 1))
    runs = np.repeat(np.arange(firsts.size, dtype=np.int64), np.diff(np.append(firsts, codes.size)))
    entities = events["entity_id"].gather(order[firsts])
    sorted_events = (runs, times, values, watermarks)
    frames = [_segment_partials(sorted_events, entities, size) for size in sizes_ms]
    return pl.concat(frames, how="vertical")


def _entity_time_order(codes: npt.NDArray[np.integer], times: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """``np.lexsort((times, codes))`` in two stable passes: time (arrivals are nearly in time
    order, so it is cheap), then the entity code (small integers: a radix sort)."""
    by_time = np.argsort(times, kind="stable")
    narrow = codes[by_time].astype(np.uint16 if codes.max() < 2**16 else np.int64)
    return by_time[np.argsort(narrow, kind="stable")]


def _segment_partials(sorted_events: SortedEvents, entities: pl.Series, size: int) -> pl.DataFrame:
    codes, times, values, watermarks = sorted_events
    starts = (times // size) * size
    keep = np.flatnonzero(starts + size > watermarks)
    codes, starts, values = codes[keep], starts[keep], values[keep]
    if keep.size == 0:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    change = (codes[1:] != codes[:-1]) | (starts[1:] != starts[:-1])
    bounds = np.concatenate(([0], np.flatnonzero(change) + 1))
    counts = np.diff(np.append(bounds, keep.size))
    sums = np.add.reduceat(values, bounds)
    means = sums / counts
    deviations = values - np.repeat(means, counts)
    return pl.DataFrame(
        {
            "entity_id": entities.gather(codes[bounds]),
            "window_ms": np.full(bounds.size, size, dtype=np.int64),
            "window_start": starts[bounds],
            "count": counts.astype(np.int64),
            "sum": sums,
            "mean": means,
            "m2": np.add.reduceat(deviations * deviations, bounds),
            "min": np.minimum.reduceat(values, bounds),
            "max": np.maximum.reduceat(values, bounds),
            "revision": np.zeros(bounds.size, dtype=np.int64),
        },
        schema=PARTIAL_SCHEMA,
    )


def merge_into(state: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """Merge a batch's partials into the open windows, joining only keys the state can hold.

    A fresh window starting after the state's last start of the same size cannot be in the state,
    so most of a batch's partials are appended without a join.
    """
    if state.height == 0 or fresh.height == 0:
        return merge_partials(state, fresh)
    last = state.group_by("window_ms").agg(pl.col("window_start").max()).rows()
    maybe_known = pl.lit(value=False)
    for size, start in last:
        maybe_known = maybe_known | ((pl.col("window_ms") == size) & (pl.col("window_start") <= start))
    known = fresh.filter(maybe_known)
    merged = _merge_two(state, known) if known.height else state
    return pl.concat([merged, fresh.filter(~maybe_known)], how="vertical_relaxed")
