"""Point features per accepted event (DESIGN §5.7): EWMA and the trailing z-score.

Events wait in a buffer until the watermark passes them (``t < W``), then are released per
entity in (event_time, sequence) order, so the recursions see event-time order whatever the
arrival order. Vectorized: the EWMA runs as Polars' ``ewm_mean`` seeded with each entity's
previous value; the z-score uses rolling mean/std over ``[t - Z, t)`` on values shifted by a
per-entity constant (the entity's first value) so the variance stays exact.
"""

from __future__ import annotations

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
    "x": pl.Float64(),
}
ENTITY_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "ewma": pl.Float64(),
    "shift": pl.Float64(),
}
POINT_SCHEMA: dict[str, pl.DataType] = {**PENDING_SCHEMA, "ewma": pl.Float64(), "zscore": pl.Float64()}


def _with_ewma(ready: pl.DataFrame, entities: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """EWMA continuing from each entity's previous value: seed rows go first, then are removed."""
    seeds = entities.join(ready.select("entity_id").unique(), on="entity_id", how="semi").select(
        "entity_id",
        pl.lit(-(2**62)).alias("event_time"),
        pl.lit(0).cast(pl.Int64).alias("sequence"),
        pl.col("ewma").alias("value"),
        pl.lit(value=True).alias("_seed"),
    )
    body = ready.with_columns(pl.lit(value=False).alias("_seed"))
    both = pl.concat([seeds, body], how="vertical_relaxed").sort(
        "entity_id", "event_time", "sequence", "value", maintain_order=True
    )
    ewma = pl.col("value").ewm_mean(alpha=alpha, adjust=False).over("entity_id")
    return both.with_columns(ewma.alias("ewma")).filter(~pl.col("_seed")).drop("_seed")


def _with_zscore(
    ready: pl.DataFrame, history: pl.DataFrame, shifts: pl.DataFrame, window_ms: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """z against the entity's values in ``[t - window, t)``; returns (rows, history incl. ready).

    Events at the same (entity, t) share one window (ties at t are excluded), so the rolling
    statistics are computed once per distinct (entity, t) and joined back.
    """
    shifted = ready.join(shifts, on="entity_id", how="left", maintain_order="left").with_columns(
        (pl.col("value") - pl.col("shift")).alias("x")
    )
    marked = pl.concat(
        [history, shifted.select("entity_id", "event_time", "x")], how="vertical_relaxed"
    ).sort("entity_id", "event_time")
    stats = (
        marked.rolling(index_column="event_time", period=f"{window_ms}i", closed="left", group_by="entity_id")
        .agg(pl.col("x").mean().alias("_m"), pl.col("x").std().alias("_s"), pl.len().alias("_n"))
        .unique(subset=["entity_id", "event_time"], keep="first")
    )
    usable = (pl.col("_n") >= 2) & (pl.col("_s") > 0)
    z = pl.when(usable).then((pl.col("x") - pl.col("_m")) / pl.col("_s")).otherwise(None)
    rows = shifted.join(stats, on=["entity_id", "event_time"], how="left", maintain_order="left")
    return rows.with_columns(z.alias("zscore")).drop("shift", "x", "_m", "_s", "_n"), marked


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
    ready = pending.filter(pl.col("event_time") < watermark_ms).sort(
        "entity_id", "event_time", "sequence", "value"
    )
    rest = pending.filter(pl.col("event_time") >= watermark_ms)
    if ready.height == 0:
        return pl.DataFrame(schema=POINT_SCHEMA), rest, history, entities
    first = ready.group_by("entity_id", maintain_order=True).agg(pl.col("value").first().alias("_first"))
    entities = (
        entities.join(first, on="entity_id", how="full", coalesce=True)
        .with_columns(pl.col("shift").fill_null(pl.col("_first")), pl.col("ewma").fill_null(pl.col("_first")))
        .drop("_first")
    )
    points, history = _with_zscore(_with_ewma(ready, entities, alpha), history, entities, window_ms)
    last = points.group_by("entity_id", maintain_order=True).agg(pl.col("ewma").last().alias("_last"))
    entities = (
        entities.join(last, on="entity_id", how="left", maintain_order="left")
        .with_columns(pl.col("_last").fill_null(pl.col("ewma")).alias("ewma"))
        .drop("_last")
        .sort("entity_id")
    )
    horizon = watermark_ms - window_ms
    return points.select(list(POINT_SCHEMA)), rest, history.filter(pl.col("event_time") >= horizon), entities
