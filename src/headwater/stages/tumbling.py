"""On-time partials of tumbling windows, by NumPy segments instead of hashing.

After one sort by (entity, time) every tumbling window is a contiguous segment of the rows, so
its statistics are ``reduceat`` calls. Window sizes that divide one another (1s, 5s, 1m) are
built from the finest up: a 5s window is the union of its five 1s windows, so its partial is
Chan's merge of their partials (plus the few rows that were late for 1s but are on time for
5s), and each coarser size costs a pass over the finer size's windows, not over the rows. The
results are those of the group-by path (``partials``) up to the rounding of a different
summation order; ``last`` and ``count_distinct`` are the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from headwater.featuresets import FeatureSetSpec
from headwater.stages.order import entity_time_order
from headwater.stages.partials import FieldPartial, Layout, layout

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
G = TypeVar("G", bound=np.generic)
_NO_ROW = np.iinfo(np.int64).max


@dataclass(frozen=True)
class _Sorted:
    """A batch's events sorted by (entity, time): entity runs, times, watermarks, per field its
    values (NaN where absent) or its presence (1.0/0.0, only when some rows lack it), and for
    the fields with ``last`` or ``count_distinct`` the sorted rows, sequences and value codes."""

    runs: Ints
    times: Ints
    watermarks: Ints
    values: dict[str, Floats]
    frame: pl.DataFrame  # the sorted rows (for last/count_distinct), only when a field needs them
    sequences: Ints
    codes: dict[str, tuple[Ints, Mask]]  # per such field: value codes, presence


class _Stats(NamedTuple):
    """A numeric field's statistics per segment; mean, min and max are NaN where it is absent."""

    n: Ints  # events carrying the field
    sum: Floats
    mean: Floats
    m2: Floats
    min: Floats
    max: Floats


class _Cells(NamedTuple):
    """A field's distinct values per segment: (segment, value code) in ascending order, with the
    first sorted row holding each."""

    segment: Ints
    code: Ints
    first: Ints


@dataclass(frozen=True)
class _Level:
    """One window size's on-time segments, (entity run, window start) in ascending order, with
    what each field needs; a coarser size is merged from them."""

    size: int
    kept: Mask  # the sorted rows on time for this size
    runs: Ints
    starts: Ints
    n: Ints
    stats: dict[str, _Stats]
    counts: dict[str, Ints]  # fields without statistics: events carrying them
    winners: dict[str, Ints]  # ``last`` fields: the sorted row of the greatest event, -1 if none
    cells: dict[str, _Cells]


def tumbling_partials(events: pl.DataFrame, sizes_ms: list[int], spec: FeatureSetSpec) -> pl.DataFrame:
    """On-time partials for tumbling windows of each size (events need ``wm_before``)."""
    lay = layout(spec)
    if not sizes_ms or events.height == 0:
        return lay.empty()
    ordered, entities = _sort(events, lay)
    levels: dict[int, _Level] = {}
    for size in sorted(set(sizes_ms)):
        levels[size] = _level(ordered, lay, size, levels)
    frames = [_frame(levels[size], ordered, entities, lay) for size in sizes_ms]
    return pl.concat(frames, how="vertical")


def _sort(events: pl.DataFrame, lay: Layout) -> tuple[_Sorted, pl.Series]:
    """The sorted batch, and the entity names of its runs. Each entity is one run of the sorted
    rows: rows carry their run's number, and the names are gathered once per run (not once per
    event), then per window from that short list."""
    codes = events["entity_id"].cast(pl.Categorical).to_physical().to_numpy()
    times = events["event_time"].to_numpy()
    order = entity_time_order(codes, times)
    codes, times = codes[order], times[order]
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
    names = [f.name for f in lay.fields if f.last or f.distinct]
    frame = events.select("event_time", "sequence", *names)[order] if names else events.clear()
    sequences = frame["sequence"].to_numpy() if names else np.empty(0, dtype=np.int64)
    value_codes = {name: (_value_codes(frame[name]), frame[name].is_not_null().to_numpy()) for name in names}
    watermarks = events["wm_before"].to_numpy()[order]
    return _Sorted(runs, times, watermarks, values, frame, sequences, value_codes), entities


def _value_codes(column: pl.Series) -> Ints:
    """An integer per distinct value (any order), 0 for nulls."""
    if column.dtype == pl.String:
        return column.cast(pl.Categorical).to_physical().fill_null(0).to_numpy().astype(np.int64)
    values = column.fill_null(0.0).to_numpy()
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _level(events: _Sorted, lay: Layout, size: int, finer: dict[int, _Level]) -> _Level:
    """Windows of ``size`` from the coarsest finer size that divides it, else from the rows.

    A row on time for a finer window is on time for the coarser window holding it (that window
    ends no earlier), so the coarser windows are the finer ones merged, plus the rows late for
    the finer size alone (their finer window had closed, their coarser one had not: few)."""
    kept = (events.times // size) * size + size > events.watermarks
    base = next((finer[s] for s in sorted(finer, reverse=True) if size % s == 0), None)
    if base is None:
        return _row_level(events, lay, size, np.flatnonzero(kept), kept)
    extra = np.flatnonzero(kept & ~base.kept)
    parts = [base] if extra.size == 0 else [base, _row_level(events, lay, size, extra, kept)]
    return _merged_level(events, lay, size, kept, parts)


def _segments(runs: Ints, starts: Ints) -> tuple[Ints, Ints]:
    """(first item, size) of each segment of items in (run, start) order."""
    change = (runs[1:] != runs[:-1]) | (starts[1:] != starts[:-1])
    bounds = np.concatenate(([0], np.flatnonzero(change) + 1))
    return bounds, np.diff(np.append(bounds, runs.size))


def _of_item(sizes: Ints) -> Ints:
    """Each item's segment."""
    return np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)


def _empty_level(lay: Layout, size: int, kept: Mask) -> _Level:
    none, nothing = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    return _Level(
        size,
        kept,
        none,
        none,
        none,
        {f.name: _Stats(none, nothing, nothing, nothing, nothing, nothing) for f in lay.fields if f.stats},
        {f.name: none for f in lay.fields if not f.stats},
        {f.name: none for f in lay.fields if f.last},
        {f.name: _Cells(none, none, none) for f in lay.fields if f.distinct},
    )


def _row_level(events: _Sorted, lay: Layout, size: int, rows: Ints, kept: Mask) -> _Level:
    """The windows of ``size`` over ``rows`` (sorted rows, ascending)."""
    if rows.size == 0:
        return _empty_level(lay, size, kept)
    runs, starts = events.runs[rows], (events.times[rows] // size) * size
    bounds, n = _segments(runs, starts)
    stats, counts, winners, cells = {}, {}, {}, {}
    for f in lay.fields:
        if f.stats:
            stats[f.name] = _stats(events.values[f.name][rows], bounds, n)
        elif f.name in events.values:
            counts[f.name] = np.add.reduceat(events.values[f.name][rows], bounds).astype(np.int64)
        else:
            counts[f.name] = n
    value_fields = [f for f in lay.fields if f.last or f.distinct]
    if value_fields:
        of_row = _of_item(n)
        for f in value_fields:
            codes, present = events.codes[f.name]
            here = present[rows]
            if f.last:
                winners[f.name] = _greatest(events, f, np.where(here, rows, -1), bounds, of_row)
            if f.distinct:
                cells[f.name] = _distinct_cells(of_row[here], codes[rows[here]], rows[here], bounds.size)
    return _Level(size, kept, runs[bounds], starts[bounds], n, stats, counts, winners, cells)


def _stats(values: Floats, bounds: Ints, counts: Ints) -> _Stats:
    """Two passes around each segment's mean; NaN marks an absent value (never a real one:
    decoding rejects non-finite numbers)."""
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
    return _Stats(n.astype(np.int64), sums, means, np.add.reduceat(deviations * deviations, bounds), lo, hi)


def _merged_level(events: _Sorted, lay: Layout, size: int, kept: Mask, parts: list[_Level]) -> _Level:
    """The windows of ``size`` holding the finer windows of ``parts`` (each in (run, start) order)."""
    parts = [p for p in parts if p.runs.size]
    if not parts:
        return _empty_level(lay, size, kept)
    runs = np.concatenate([p.runs for p in parts])
    starts = np.concatenate([(p.starts // size) * size for p in parts])
    order = _merge_order(runs, starts, size) if len(parts) > 1 else None

    def units(arrays: list[npt.NDArray[G]]) -> npt.NDArray[G]:
        joined = np.concatenate(arrays)
        return joined if order is None else joined[order]

    if order is not None:
        runs, starts = runs[order], starts[order]
    bounds, sizes = _segments(runs, starts)
    of_unit = _of_item(sizes)
    stats, counts, winners, cells = {}, {}, {}, {}
    for f in lay.fields:
        if f.stats:
            merged = (units([p.stats[f.name][i] for p in parts]) for i in range(len(_Stats._fields)))
            stats[f.name] = _merged_stats(_Stats._make(merged), bounds, of_unit)
        else:
            counts[f.name] = np.add.reduceat(units([p.counts[f.name] for p in parts]), bounds)
        if f.last:
            winners[f.name] = _greatest(events, f, units([p.winners[f.name] for p in parts]), bounds, of_unit)
    if any(f.distinct for f in lay.fields):
        # a part's segment i is unit offset + i, at place[offset + i] once ``order`` is applied
        offsets = np.cumsum([0] + [p.runs.size for p in parts[:-1]])
        place = None
        if order is not None:
            place = np.empty_like(order)
            place[order] = np.arange(order.size)
        for f in lay.fields:
            if f.distinct:
                held = [p.cells[f.name] for p in parts]
                unit = np.concatenate([c.segment + o for c, o in zip(held, offsets, strict=True)])
                code, first = (np.concatenate([c[i] for c in held]) for i in (1, 2))
                at = unit if place is None else place[unit]
                cells[f.name] = _distinct_cells(of_unit[at], code, first, bounds.size)
    n = np.add.reduceat(units([p.n for p in parts]), bounds)
    return _Level(size, kept, runs[bounds], starts[bounds], n, stats, counts, winners, cells)


def _merge_order(runs: Ints, starts: Ints, size: int) -> npt.NDArray[np.intp]:
    """The stable (run, start) order of parts each already in that order: one integer key, whose
    sort merges the sorted runs it finds."""
    low = int(starts.min())
    span = (int(starts.max()) - low) // size + 1
    if (int(runs.max()) + 1) * span < 2**62:
        return np.argsort(runs * span + (starts - low) // size, kind="stable")
    return np.lexsort((starts, runs))


def _merged_stats(units: _Stats, bounds: Ints, of_unit: Ints) -> _Stats:
    """Chan's formula over the parts of each segment at once, around the merged mean:
    M2 = Σ M2_u + Σ n_u·(mean_u - mean)²."""
    count = np.add.reduceat(units.n, bounds)
    sums = np.add.reduceat(units.sum, bounds)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / count
    deviations = units.mean - means[of_unit]
    spread = units.m2 + units.n * deviations * deviations
    if not units.n.all():  # (a part without the field: NaN mean, nothing to add)
        spread = np.where(units.n > 0, spread, 0.0)
    low, high = (np.minimum, np.maximum) if units.n.all() else (np.fmin, np.fmax)  # (NaN: absent)
    lo, hi = low.reduceat(units.min, bounds), high.reduceat(units.max, bounds)
    return _Stats(count, sums, means, np.add.reduceat(spread, bounds), lo, hi)


def _greatest(events: _Sorted, f: FieldPartial, candidates: Ints, bounds: Ints, of_item: Ints) -> Ints:
    """Per segment the candidate row (-1: none) with the greatest (event_time, sequence, value).
    Sorted rows of one entity are in time order, so it is the highest candidate row unless
    others share its time: those few segments are settled by a sort on (sequence, value)."""
    best = np.maximum.reduceat(candidates, bounds)
    found = best >= 0
    at = np.maximum(best, 0)
    times = events.times
    tied = (candidates >= 0) & (times[np.maximum(candidates, 0)] == times[at][of_item]) & found[of_item]
    several = np.add.reduceat(tied.astype(np.int64), bounds) > 1
    if several.any():
        items = np.flatnonzero(tied & several[of_item])
        rows = candidates[items]
        rank = events.frame[f.name].gather(rows).rank("dense").to_numpy()
        order = items[np.lexsort((rank, events.sequences[rows], of_item[items]))]
        group = of_item[order]
        ends = np.flatnonzero(np.append(group[1:] != group[:-1], True))
        best[group[ends]] = candidates[order[ends]]
    return best


def _distinct_cells(segment: Ints, codes: Ints, rows: Ints, segments: int) -> _Cells:
    """Each (segment, value code) present, in ascending order, with the least of its rows. A
    table of every cell, filled by ``np.minimum.at``, where it is no larger than a few times the
    items (a field of few distinct values: a status, a unit); a sort otherwise."""
    width = int(codes.max()) + 1 if codes.size else 1
    keys = segment * width + codes
    size = segments * width
    if size > 4 * keys.size + 65_536:
        cells, inverse = np.unique(keys, return_inverse=True)
        first = np.full(cells.size, _NO_ROW, dtype=np.int64)
        np.minimum.at(first, inverse, rows)
    else:
        table = np.full(size, _NO_ROW, dtype=np.int64)
        np.minimum.at(table, keys, rows)
        cells = np.flatnonzero(table < _NO_ROW)
        first = table[cells]
    return _Cells(cells // width, cells % width, first)


def _frame(level: _Level, events: _Sorted, entities: pl.Series, lay: Layout) -> pl.DataFrame:
    """A level's partials in the layout's columns."""
    m = level.runs.size
    if m == 0:
        return lay.empty()
    columns: dict[str, pl.Series | npt.NDArray[np.generic]] = {
        "entity_id": entities.gather(level.runs),
        "window_ms": np.full(m, level.size, dtype=np.int64),
        "window_start": level.starts,
        "n": level.n.astype(np.int64),
        "revision": np.zeros(m, dtype=np.int64),
    }
    for f in lay.fields:
        if f.stats:
            s = level.stats[f.name]
            whole = bool(s.n.all())  # every segment has a value: no NaN to turn into null
            columns |= {
                f.col("count"): s.n.astype(np.int64),
                f.col("sum"): s.sum,
                f.col("mean"): _nullable(s.mean, whole),
                f.col("m2"): s.m2,
                f.col("min"): _nullable(s.min, whole),
                f.col("max"): _nullable(s.max, whole),
            }
        else:
            columns[f.col("count")] = level.counts[f.name].astype(np.int64)
        if f.last:
            columns |= _last_columns(events, f, level.winners[f.name])
        if f.distinct:
            columns[f.col("distinct")] = _distinct_lists(events, f, level.cells[f.name], m)
    return pl.DataFrame(columns).select(list(lay.schema)).cast(lay.schema)  # type: ignore[arg-type]


def _nullable(values: Floats, whole: bool) -> pl.Series:
    return pl.Series(values) if whole else pl.Series(values).fill_nan(None)


def _last_columns(events: _Sorted, f: FieldPartial, winners: Ints) -> dict[str, pl.Series]:
    missing = pl.Series(winners < 0)
    at = np.maximum(winners, 0)
    return {
        f.col("last"): events.frame[f.name].gather(at).set(missing, None),
        f.col("last_t"): pl.Series(events.times[at]).set(missing, None),
        f.col("last_s"): pl.Series(events.sequences[at]).set(missing, None),
    }


def _distinct_lists(events: _Sorted, f: FieldPartial, cells: _Cells, segments: int) -> pl.Series:
    values = events.frame[f.name].gather(cells.first).to_arrow()
    offsets = np.concatenate(([0], np.cumsum(np.bincount(cells.segment, minlength=segments))))
    # Arrow in and out by the ways that import nothing more: pa.array on a NumPy array imports
    # pandas (when installed) and pl.Series on an Arrow array pyarrow.compute, on first use,
    # 0.3 s and 0.06 s of a run.
    lists = pa.LargeListArray.from_arrays(pl.Series(offsets, dtype=pl.Int64).to_arrow(), values)
    batch = pa.RecordBatch.from_arrays([lists], names=[f.col("distinct")])
    return pl.DataFrame(pl.from_arrow(batch)).to_series()
