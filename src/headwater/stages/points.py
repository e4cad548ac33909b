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
    ready: pl.DataFrame, history: pl.DataFrame, shifts: pl.DataFrame, window_ms: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """z against the entity's values in ``[t - window, t)``; returns (rows, history incl. ready).

    Rolling statistics run over history + released rows sorted by (entity code, time); ``closed
    = "left"`` excludes the event itself and its ties at t.
    """
    shifted = ready.join(shifts, on="entity_id", how="left", maintain_order="left").with_columns(
        (pl.col("value") - pl.col("shift")).alias("x")
    )
    marked = pl.concat(
        [
            history.with_columns(pl.lit(None, dtype=pl.Int64).alias("_row")),
            shifted.select(
                "entity_id", "event_time", "x", pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")
            ),
        ],
        how="vertical_relaxed",
    )
    # (code, time, value): ties broken by value, so every window sums in the same order on any run
    marked = marked.with_columns(_code()).sort("_code", "event_time", "x")
    stats = marked.rolling(
        index_column="event_time", period=f"{window_ms}i", closed="left", group_by="_code"
    ).agg(pl.col("x").mean().alias("_m"), pl.col("x").std().alias("_s"), pl.len().alias("_n"))
    if not (stats["_code"].equals(marked["_code"]) and stats["event_time"].equals(marked["event_time"])):
        msg = "rolling output is not aligned with its input"  # guards a Polars behaviour we rely on
        raise AssertionError(msg)
    usable = (pl.col("_n") >= 2) & (pl.col("_s") > 0)
    z = pl.when(usable).then((pl.col("x") - pl.col("_m")) / pl.col("_s")).otherwise(None)
    joined = marked.select("x", "_row").with_columns(stats["_m"], stats["_s"], stats["_n"])
    per_row = joined.select(z.alias("zscore"), "_row").filter(pl.col("_row").is_not_null()).sort("_row")
    rows = shifted.with_columns(per_row["zscore"]).drop("shift", "x")
    return rows, marked.select("entity_id", "event_time", "x")


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
        .with_columns(pl.col("shift").fill_null(pl.col("_first")), pl.col("ewma").fill_null(pl.col("_first")))
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
