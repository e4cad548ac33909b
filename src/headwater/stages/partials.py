"""Mergeable per-window partial aggregates, one set of columns per declared field.

Partials are what the engine keeps for open windows and what makes it exact at any batch size.
A window's partial has ``n`` (accepted events, whatever fields they carry: it drives the
revision) and, per field, ``{f}|count`` (events carrying it) and what its aggregations need:
count, sum, mean, M2 (Σ squared deviations), min and max for the numeric statistics; the value,
event_time and sequence of the greatest (event_time, sequence, value) for ``last``; the list of
distinct values for ``count_distinct``. Each batch's statistics are computed with two passes
around the group mean and combined with Chan's pairwise formula; the variance never goes through
the naive sum of squares. Tumbling windows take a NumPy fast path (:mod:`.tumbling`); the
group-by path here serves sliding windows, corrections and releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import polars as pl

from headwater.featuresets import NUMERIC_WINDOW_AGGREGATIONS, FeatureSetSpec

KEY = ["entity_id", "window_ms", "window_start"]
_STATS = ("sum", "mean", "m2", "min", "max")


@dataclass(frozen=True)
class FieldPartial:
    """What a window keeps of one field; ``dtype`` is the field's event column type."""

    name: str
    dtype: pl.DataType
    stats: bool
    last: bool
    distinct: bool

    def col(self, part: str) -> str:
        return f"{self.name}|{part}"


@dataclass(frozen=True)
class Layout:
    """The partial columns of a feature set (the fields with window aggregations)."""

    fields: tuple[FieldPartial, ...]

    @property
    def schema(self) -> dict[str, pl.DataType]:
        schema: dict[str, pl.DataType] = {
            "entity_id": pl.String(),
            "window_ms": pl.Int64(),
            "window_start": pl.Int64(),
            "n": pl.Int64(),
            "revision": pl.Int64(),
        }
        for f in self.fields:
            schema[f.col("count")] = pl.Int64()
            if f.stats:
                schema.update({f.col(p): pl.Float64() for p in _STATS})
            if f.last:
                schema.update(
                    {f.col("last"): f.dtype, f.col("last_t"): pl.Int64(), f.col("last_s"): pl.Int64()}
                )
            if f.distinct:
                schema[f.col("distinct")] = pl.List(f.dtype)
        return schema

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)


@lru_cache(maxsize=64)
def layout(spec: FeatureSetSpec) -> Layout:
    fields = []
    for f in spec.features:
        aggs = f.window_aggregations
        if aggs:
            dtype: pl.DataType = pl.Float64() if f.numeric else pl.String()
            stats = any(a in NUMERIC_WINDOW_AGGREGATIONS for a in aggs)
            fields.append(FieldPartial(f.name, dtype, stats, "last" in aggs, "count_distinct" in aggs))
    return Layout(tuple(fields))


def _value_parts(rows: pl.DataFrame, by: list[str], f: FieldPartial) -> pl.DataFrame:
    """``last`` and ``count_distinct`` of one field per group of ``by`` (one row per group with a
    value). One sort puts each group's greatest (present, event_time, sequence, value) last, so
    the aggregations are plain ``last`` and list building: Polars' fast paths, not an expression
    evaluated group by group."""
    value = pl.col(f.name)
    parts = []
    if f.last:
        ordered = rows.sort([*by, value.is_not_null(), "event_time", "sequence", value], nulls_last=False)
        last = ordered.group_by(by, maintain_order=True).agg(
            value.last().alias(f.col("last")),
            pl.col("event_time").last().alias(f.col("last_t")),
            pl.col("sequence").last().alias(f.col("last_s")),
        )
        parts.append(last.filter(pl.col(f.col("last")).is_not_null()))
    if f.distinct:
        distinct = rows.select(*by, value).drop_nulls().unique().sort([*by, f.name])
        parts.append(distinct.group_by(by, maintain_order=True).agg(value.alias(f.col("distinct"))))
    out = parts[0]
    for other in parts[1:]:
        out = out.join(other, on=by, how="full", coalesce=True)
    return out


def _with_value_parts(frame: pl.DataFrame, rows: pl.DataFrame, by: list[str], lay: Layout) -> pl.DataFrame:
    """``frame`` (one row per group) with every field's last/distinct columns joined on ``by``."""
    for f in lay.fields:
        if f.last or f.distinct:
            frame = frame.join(_value_parts(rows, by, f), on=by, how="left", maintain_order="left")
    return frame


def partials(assigned: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Per-window partials of raw events (one row per event and window); two passes around the mean."""
    lay = layout(spec)
    if assigned.height == 0:
        return lay.empty()
    stats = [f for f in lay.fields if f.stats]
    centered = assigned.with_columns(pl.col(f.name).mean().over(KEY).alias(f.col("_mean")) for f in stats)
    aggs = [pl.len().cast(pl.Int64).alias("n"), pl.lit(0, dtype=pl.Int64).alias("revision")]
    for f in lay.fields:
        value = pl.col(f.name)
        aggs.append(value.count().cast(pl.Int64).alias(f.col("count")))
        if f.stats:
            deviation = value - pl.col(f.col("_mean"))
            aggs += [
                value.sum().alias(f.col("sum")),
                pl.col(f.col("_mean")).first().alias(f.col("mean")),
                (deviation * deviation).sum().alias(f.col("m2")),
                value.min().alias(f.col("min")),
                value.max().alias(f.col("max")),
            ]
    grouped = _with_value_parts(centered.group_by(KEY).agg(aggs), assigned, KEY, lay)
    return grouped.select(list(lay.schema)).cast(lay.schema)  # type: ignore[arg-type]


def merge_partials(spec: FeatureSetSpec, *frames: pl.DataFrame) -> pl.DataFrame:
    """Chan's pairwise merge of partials with unique keys per frame, folded left to right.

    n = n_a + n_b, d = mean_b - mean_a, mean = mean_a + d·n_b/n, M2 = M2_a + M2_b + d²·n_a·n_b/n,
    per field over the events carrying it.
    """
    present = [f for f in frames if f.height]
    if not present:
        return layout(spec).empty()
    merged = present[0]
    for other in present[1:]:
        merged = _merge_two(merged, other, spec)
    return merged


def _merge_field(f: FieldPartial) -> list[pl.Expr]:
    def both(part: str) -> tuple[pl.Expr, pl.Expr]:
        return pl.col(f.col(part)), pl.col(f.col(part) + "_b")

    c_a, c_b = (c.fill_null(0) for c in both("count"))
    count = c_a + c_b
    out = [count.alias(f.col("count"))]
    if f.stats:
        (m_a, m_b), (s_a, s_b), (q_a, q_b) = both("mean"), both("sum"), both("m2")
        mean_a, mean_b = m_a.fill_null(m_b), m_b.fill_null(m_a)
        delta = mean_b - mean_a
        cross = pl.when((c_a > 0) & (c_b > 0)).then(delta * delta * c_a * c_b / count).otherwise(0.0)
        lo, hi = both("min"), both("max")
        out += [
            (s_a.fill_null(0.0) + s_b.fill_null(0.0)).alias(f.col("sum")),
            pl.when(count > 0).then(mean_a + delta * c_b / count).alias(f.col("mean")),
            (q_a.fill_null(0.0) + q_b.fill_null(0.0) + cross).alias(f.col("m2")),
            pl.min_horizontal(*lo).alias(f.col("min")),
            pl.max_horizontal(*hi).alias(f.col("max")),
        ]
    if f.last:
        (v_a, v_b), (t_a, t_b), (q_a, q_b) = both("last"), both("last_t"), both("last_s")
        later = (t_b > t_a) | ((t_b == t_a) & ((q_b > q_a) | ((q_b == q_a) & (v_b > v_a))))
        b_wins = t_a.is_null() | (t_b.is_not_null() & later)
        for part in ("last", "last_t", "last_s"):
            a, b = both(part)
            out.append(pl.when(b_wins).then(b).otherwise(a).alias(f.col(part)))
    if f.distinct:
        d_a, d_b = both("distinct")
        union = pl.concat_list([d_a, d_b]).list.unique().list.sort()
        out.append(
            pl.when(d_a.is_null())
            .then(d_b)
            .when(d_b.is_null())
            .then(d_a)
            .otherwise(union)
            .alias(f.col("distinct"))
        )
    return out


def _merge_two(left: pl.DataFrame, right: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    joined = left.join(right, on=KEY, how="full", coalesce=True, suffix="_b")
    exprs = [
        *KEY,
        (pl.col("n").fill_null(0) + pl.col("n_b").fill_null(0)).alias("n"),
        (pl.col("revision").fill_null(0) + pl.col("revision_b").fill_null(0)).alias("revision"),
    ]
    for f in layout(spec).fields:
        exprs += _merge_field(f)
    return joined.select(exprs)


def merge_into(state: pl.DataFrame, fresh: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Merge a batch's partials into the open windows, joining only keys the state can hold.

    A fresh window starting after the state's last start of the same size cannot be in the state,
    so most of a batch's partials are appended without a join.
    """
    if state.height == 0 or fresh.height == 0:
        return merge_partials(spec, state, fresh)
    last = state.group_by("window_ms").agg(pl.col("window_start").max()).rows()
    maybe_known = pl.lit(value=False)
    for size, start in last:
        maybe_known = maybe_known | ((pl.col("window_ms") == size) & (pl.col("window_start") <= start))
    known = fresh.filter(maybe_known)
    merged = _merge_two(state, known, spec) if known.height else state
    return pl.concat([merged, fresh.filter(~maybe_known)], how="vertical_relaxed")
