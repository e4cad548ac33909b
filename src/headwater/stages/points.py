"""Point features per accepted event (DESIGN §5.7): EWMA and the trailing z-score.

Events wait in a buffer until the watermark passes them (``t < W``), then are released per
entity in (event_time, sequence) order, so the recursions see event-time order whatever the
arrival order. Vectorized: the EWMA runs as Polars' ``ewm_mean`` seeded with each entity's
previous value; the z-score uses shifted prefix sums over ``[t - Z, t)`` (values minus the
entity's previous EWMA, a close estimate of the local mean, so the variance keeps its digits).
"""

from __future__ import annotations

import numpy as np
import polars as pl

PENDING_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "event_time": pl.Int64(),
    "sequence": pl.Int64(),
    "value": pl.Float64(),
}
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "event_time": pl.Int64(),
    "value": pl.Float64(),
}
ENTITY_SCHEMA: dict[str, pl.DataType] = {"entity_id": pl.String(), "ewma": pl.Float64()}
POINT_SCHEMA: dict[str, pl.DataType] = {**PENDING_SCHEMA, "ewma": pl.Float64(), "zscore": pl.Float64()}


def _code(column: str = "entity_id") -> pl.Expr:
    """An integer code per entity, comparable only within the one frame it was computed on.

    Sorting and grouping on it beats strings; never compare codes from two separate casts.
    """
    return pl.col(column).cast(pl.Categorical).to_physical().alias("_code")


def _with_ewma(ready: pl.DataFrame, entities: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """EWMA continuing from each entity's previous value: seed rows go first, then are removed.

    ``ready`` is sorted by (_code, event_time, sequence, value); a stable sort on the code alone
    puts each entity's seed (concatenated first) just before its events.
    """
    seeds = entities.join(ready.select("entity_id").unique(), on="entity_id", how="semi").select(
        "entity_id",
        pl.lit(-(2**62)).alias("event_time"),
        pl.lit(0).cast(pl.Int64).alias("sequence"),
        pl.col("ewma").alias("value"),
        pl.lit(value=True).alias("_seed"),
    )
    body = ready.drop("_code").with_columns(pl.lit(value=False).alias("_seed"))
    both = pl.concat([seeds, body], how="vertical_relaxed")  # codes come from ONE cast: comparable
    both = both.with_columns(_code()).sort("_code", maintain_order=True)
    ewma = pl.col("value").ewm_mean(alpha=alpha, adjust=False).over("_code")
    return both.with_columns(ewma.alias("ewma")).filter(~pl.col("_seed")).drop("_seed", "_code")


def _with_zscore(
    ready: pl.DataFrame, history: pl.DataFrame, entities: pl.DataFrame, window_ms: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """z against the entity's values in ``[t - window, t)``; returns (rows, history incl. ready).

    Shifted sums: values minus the entity's EWMA before this batch (close to the local mean, so
    the variance keeps its digits), per-entity prefix sums, and a binary search for each window's
    start and end. The window end is the first row at time t, so ties at t are excluded.
    """
    marked = pl.concat(
        [
            history.with_columns(pl.lit(-1, dtype=pl.Int64).alias("_row")),
            ready.select(
                "entity_id", "event_time", "value", pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")
            ),
        ],
        how="vertical_relaxed",
    ).join(entities.select("entity_id", pl.col("ewma").alias("_k")), on="entity_id", how="left")
    codes = marked.select(_code())["_code"].to_numpy().astype(np.int64)
    times = marked["event_time"].to_numpy()
    values = marked["value"].to_numpy()
    # A stable sort by (entity, time): history (stored in order) precedes this batch's events, which
    # arrive sorted by (time, sequence, value), so every window sums in the same order on any run.
    key = (codes << 42) | (times - times.min())
    order = np.argsort(key, kind="stable")
    key, codes = key[order], codes[order]
    x = values[order] - marked["_k"].to_numpy()[order]
    start = np.searchsorted(key, np.maximum(key - window_ms, codes << 42), side="left")
    end = np.searchsorted(key, key, side="left")
    sums = pl.DataFrame({"c": codes, "x": x}).select(
        (pl.col("x").cum_sum().over("c") - pl.col("x")).alias("p1"),
        ((pl.col("x") ** 2).cum_sum().over("c") - pl.col("x") ** 2).alias("p2"),
    )
    p1, p2 = sums["p1"].to_numpy(), sums["p2"].to_numpy()
    n = (end - start).astype(np.float64)
    s1, s2 = p1[end] - p1[start], p2[end] - p2[start]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 - s1 * mean, 0.0) / (n - 1))
        z = np.where((n >= 2) & (std > 0), (x - mean) / std, np.nan)
    row = marked["_row"].to_numpy()[order]
    mine = row >= 0
    out = np.empty(ready.height, dtype=np.float64)
    out[row[mine]] = z[mine]
    zscore = pl.Series("zscore", out).fill_nan(None)
    return ready.with_columns(zscore), marked.select("entity_id", "event_time", "value")[order]


def release_points(
    pending: pl.DataFrame,
    history: pl.DataFrame,
    entities: pl.DataFrame,
    watermark_ms: int,
    *,
    alpha: float,
    window_ms: int,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Release pending events with ``t < W``: returns (points, pending, history, entities)."""
    ready = pending.filter(pl.col("event_time") < watermark_ms)
    rest = pending.filter(pl.col("event_time") >= watermark_ms)
    if ready.height == 0:
        return pl.DataFrame(schema=POINT_SCHEMA), rest, history, entities
    ready = ready.with_columns(_code()).sort("_code", "event_time", "sequence", "value")
    first = ready.filter(pl.col("_code").is_first_distinct()).select(
        "entity_id", pl.col("value").alias("_first")
    )
    entities = (
        entities.join(first, on="entity_id", how="full", coalesce=True)
        .with_columns(pl.col("ewma").fill_null(pl.col("_first")))
        .drop("_first")
    )
    with_ewma = _with_ewma(ready, entities, alpha)
    last = with_ewma.filter(pl.col("entity_id").is_last_distinct()).select(
        "entity_id", pl.col("ewma").alias("_last")
    )
    points, history = _with_zscore(with_ewma, history, entities, window_ms)
    entities = (
        entities.join(last, on="entity_id", how="left", maintain_order="left")
        .with_columns(pl.col("_last").fill_null(pl.col("ewma")).alias("ewma"))
        .drop("_last")
        .sort("entity_id")
    )
    horizon = watermark_ms - window_ms
    return points.select(list(POINT_SCHEMA)), rest, history.filter(pl.col("event_time") >= horizon), entities
