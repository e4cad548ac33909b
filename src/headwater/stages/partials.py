"""Mergeable per-window partial aggregates, one set of columns per declared field.

Partials are what the engine keeps for open windows and what makes it exact at any batch size.
A window's partial has ``n`` (accepted events, whatever fields they carry: it drives the
revision) and, per field, ``{f}|count`` (events carrying it) and what its aggregations need:
count, sum, mean, M2 (Σ squared deviations), min and max for the numeric statistics; the value,
event_time and sequence of the greatest (event_time, sequence, value) for ``last``; the list of
distinct values for ``count_distinct``. Each batch's statistics are computed with two passes
around the group mean and combined with Chan's pairwise formula; the variance never goes through
the naive sum of squares. Tumbling windows take a NumPy fast path: after one sort by (entity,
time) every window is a contiguous segment, so the statistics are ``reduceat`` calls with no
hashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

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


Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Sorted:
    """A batch's events sorted by (entity, time): entity runs, times, watermarks, per field its
    values (NaN where absent) or its presence (1.0/0.0, only when some rows lack it)."""

    runs: Ints
    times: Ints
    watermarks: Ints
    values: dict[str, Floats]
    frame: pl.DataFrame  # the sorted rows (for last/count_distinct), only when a field needs them
    codes: dict[str, tuple[Ints, npt.NDArray[np.bool_]]]  # per such field: value codes, presence


def tumbling_partials(events: pl.DataFrame, sizes_ms: list[int], spec: FeatureSetSpec) -> pl.DataFrame:
    """On-time partials for tumbling windows of each size (events need ``wm_before``)."""
    lay = layout(spec)
    if not sizes_ms or events.height == 0:
        return lay.empty()
    codes = events["entity_id"].cast(pl.Categorical).to_physical().to_numpy()
    times = events["event_time"].to_numpy()
    order = _entity_time_order(codes, times)
    codes, times = codes[order], times[order]
    # Each entity is one run of the sorted rows: rows carry their run's number, and the names are
    # gathered once per run (not once per event), then per window from that short list.
    firsts = np.concatenate(([0], np.flatnonzero(codes[1:] != codes[:-1]) + 1))
    runs = np.repeat(np.arange(firsts.size, dtype=np.int64), np.diff(np.append(firsts, codes.size)))
    entities = events["entity_id"].gather(order[firsts])
    values = {}
    for f in lay.fields:
        column = events[f.name]
        if f.stats:
            values[f.name] = column.to_numpy()[order]
        elif column.null_count():
            values[f.name] = column.is_not_null().to_numpy()[order].astype(np.float64)
    needs_frame = any(f.last or f.distinct for f in lay.fields)
    names = [f.name for f in lay.fields if f.last or f.distinct]
    frame = events.select("event_time", "sequence", *names)[order] if needs_frame else events.clear()
    value_codes = {name: (_value_codes(frame[name]), frame[name].is_not_null().to_numpy()) for name in names}
    sorted_events = _Sorted(runs, times, events["wm_before"].to_numpy()[order], values, frame, value_codes)
    frames = [_segment_partials(sorted_events, entities, size, lay) for size in sizes_ms]
    return pl.concat(frames, how="vertical")


def _entity_time_order(codes: npt.NDArray[np.integer], times: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """``np.lexsort((times, codes))`` in two stable passes: time (arrivals are nearly in time
    order, so it is cheap), then the entity code (small integers: a radix sort)."""
    by_time = np.argsort(times, kind="stable")
    narrow = codes[by_time].astype(np.uint16 if codes.max() < 2**16 else np.int64)
    return by_time[np.argsort(narrow, kind="stable")]


def _stats(values: Floats, bounds: Ints, counts: Ints) -> dict[str, pl.Series]:
    """count, sum, mean, M2, min, max per segment; NaN marks an absent value (never a real one:
    decoding rejects non-finite numbers), and a field absent from a whole segment has nulls."""
    present = ~np.isnan(values)
    if present.all():
        n = counts
        sums = np.add.reduceat(values, bounds)
        means = sums / n
        deviations = values - np.repeat(means, n)
        lo, hi = np.minimum.reduceat(values, bounds), np.maximum.reduceat(values, bounds)
    else:
        n = np.add.reduceat(present.astype(np.int64), bounds)
        sums = np.add.reduceat(np.where(present, values, 0.0), bounds)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / n
        deviations = np.where(present, values - np.repeat(means, counts), 0.0)
        lo, hi = np.fmin.reduceat(values, bounds), np.fmax.reduceat(values, bounds)
    whole = bool(present.all() or n.all())  # every segment has a value: no NaN to turn into null
    return {
        "count": pl.Series(n.astype(np.int64)),
        "sum": pl.Series(sums),
        "mean": _nullable(means, whole),
        "m2": pl.Series(np.add.reduceat(deviations * deviations, bounds)),
        "min": _nullable(lo, whole),
        "max": _nullable(hi, whole),
    }


def _nullable(values: Floats, whole: bool) -> pl.Series:
    return pl.Series(values) if whole else pl.Series(values).fill_nan(None)


def _segment_partials(events: _Sorted, entities: pl.Series, size: int, lay: Layout) -> pl.DataFrame:
    starts = (events.times // size) * size
    keep = np.flatnonzero(starts + size > events.watermarks)
    if keep.size == 0:
        return lay.empty()
    codes, starts = events.runs[keep], starts[keep]
    change = (codes[1:] != codes[:-1]) | (starts[1:] != starts[:-1])
    bounds = np.concatenate(([0], np.flatnonzero(change) + 1))
    counts = np.diff(np.append(bounds, keep.size))
    columns: dict[str, pl.Series | npt.NDArray[np.int64]] = {
        "entity_id": entities.gather(codes[bounds]),
        "window_ms": np.full(bounds.size, size, dtype=np.int64),
        "window_start": starts[bounds],
        "n": counts.astype(np.int64),
        "revision": np.zeros(bounds.size, dtype=np.int64),
    }
    for f in lay.fields:
        if f.stats:
            for part, series in _stats(events.values[f.name][keep], bounds, counts).items():
                columns[f.col(part)] = series
        elif f.name in events.values:
            columns[f.col("count")] = np.add.reduceat(events.values[f.name][keep], bounds).astype(np.int64)
        else:
            columns[f.col("count")] = counts.astype(np.int64)
    value_fields = [f for f in lay.fields if f.last or f.distinct]
    if value_fields:
        rows = events.frame[keep]
        segments = _Segments(bounds, counts, np.repeat(np.arange(bounds.size, dtype=np.int64), counts))
        for f in value_fields:
            codes, present = events.codes[f.name]
            columns |= _segment_values(rows, segments, f, codes[keep], present[keep])
    return pl.DataFrame(columns).select(list(lay.schema)).cast(lay.schema)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Segments:
    """Contiguous groups of sorted rows: first row, size, and each row's group number."""

    bounds: Ints
    counts: Ints
    of_row: Ints


def _value_codes(column: pl.Series) -> Ints:
    """An integer per distinct value (any order), 0 for nulls."""
    if column.dtype == pl.String:
        return column.cast(pl.Categorical).to_physical().fill_null(0).to_numpy().astype(np.int64)
    values = column.fill_null(0.0).to_numpy()
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _segment_values(
    rows: pl.DataFrame, segments: _Segments, f: FieldPartial, codes: Ints, present: npt.NDArray[np.bool_]
) -> dict[str, pl.Series]:
    """``last`` and the distinct values of one field per segment, rows sorted by (segment, time)."""
    column = rows[f.name]
    out: dict[str, pl.Series] = {}
    if f.last:
        out |= _segment_last(rows, column, present, segments, f)
    if f.distinct:
        cells, width, first = _distinct_cells(segments, codes, present)
        values = column.gather(first).to_arrow()
        per_segment = np.bincount(cells // width, minlength=segments.bounds.size)
        offsets = np.concatenate(([0], np.cumsum(per_segment)))
        # Arrow in and out by the ways that import nothing more: pa.array on a NumPy array imports
        # pandas (when installed) and pl.Series on an Arrow array pyarrow.compute, on first use,
        # 0.3 s and 0.06 s of a run.
        lists = pa.LargeListArray.from_arrays(pl.Series(offsets, dtype=pl.Int64).to_arrow(), values)
        batch = pa.RecordBatch.from_arrays([lists], names=[f.col("distinct")])
        out[f.col("distinct")] = pl.DataFrame(pl.from_arrow(batch)).to_series()
    return out


def _distinct_cells(
    segments: _Segments, codes: Ints, present: npt.NDArray[np.bool_]
) -> tuple[Ints, int, Ints]:
    """Each (segment, value code) present, as ``segment * width + code`` in ascending order, and
    the first row holding it. A table of every cell, filled by ``np.minimum.at``, where it is no
    larger than a few times the rows (a field of few distinct values: a status, a unit); a sort
    of the rows' cells otherwise. Both give the same cells and rows."""
    width = int(codes.max()) + 1
    where = np.flatnonzero(present)
    keys = segments.of_row[where] * width + codes[where]
    size = segments.bounds.size * width
    if size > 4 * where.size + 65_536:
        cells, first = np.unique(keys, return_index=True)
        return cells, width, where[first]
    table = np.full(size, present.size, dtype=np.int64)
    np.minimum.at(table, keys, where)
    cells = np.flatnonzero(table < present.size)
    return cells, width, table[cells]


def _segment_last(
    rows: pl.DataFrame,
    column: pl.Series,
    present: npt.NDArray[np.bool_],
    segments: _Segments,
    f: FieldPartial,
) -> dict[str, pl.Series]:
    """Per segment the present row with the greatest (event_time, sequence, value). Rows are in
    time order within a segment, so it is the last present row, unless others share its time:
    those few segments are settled by a sort on (sequence, value)."""
    times, sequences = rows["event_time"].to_numpy(), rows["sequence"].to_numpy()
    last = np.maximum.reduceat(np.where(present, np.arange(present.size), -1), segments.bounds)
    found = last >= 0
    at = np.maximum(last, 0)
    tied = present & (times == times[at][segments.of_row]) & found[segments.of_row]
    several = np.add.reduceat(tied.astype(np.int64), segments.bounds) > 1
    if several.any():
        rows_tied = np.flatnonzero(tied & several[segments.of_row])
        rank = column.gather(rows_tied).rank("dense").to_numpy()
        order = rows_tied[np.lexsort((rank, sequences[rows_tied], segments.of_row[rows_tied]))]
        group = segments.of_row[order]
        ends = np.flatnonzero(np.append(group[1:] != group[:-1], True))
        at[group[ends]] = order[ends]
    missing = pl.Series(~found)
    return {
        f.col("last"): column.gather(at).set(missing, None),
        f.col("last_t"): pl.Series(times[at]).set(missing, None),
        f.col("last_s"): pl.Series(sequences[at]).set(missing, None),
    }


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
