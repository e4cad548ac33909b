"""Point features per accepted event (DESIGN §5.7): EWMA and the trailing z-score.

Events wait in a buffer until the watermark passes them (``t < W``), then are released per
entity in (event_time, sequence) order, so the recursions see event-time order whatever the
arrival order. Vectorized: entities get integer codes once per release (an ``Enum`` over the
sorted entity names, so codes agree across the buffer, the history and the EWMA table), one
NumPy sort orders the released events, the EWMA runs as Polars' ``ewm_mean`` seeded with each
entity's previous value, and the z-score uses shifted prefix sums over ``[t - Z, t)`` (values
minus the entity's previous EWMA, a close estimate of the local mean, so the variance keeps its
digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from headwater.stages.order import entity_time_order

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "field": pl.String(),
    "event_time": pl.Int64(),
    "value": pl.Float64(),
}
ENTITY_SCHEMA: dict[str, pl.DataType] = {"entity_id": pl.String(), "field": pl.String(), "ewma": pl.Float64()}


def pending_schema(fields: tuple[str, ...]) -> dict[str, pl.DataType]:
    """Events waiting for the watermark: the event and its point fields (null where absent)."""
    return {
        "entity_id": pl.String(),
        "event_time": pl.Int64(),
        "sequence": pl.Int64(),
        **{f: pl.Float64() for f in fields},
    }


def point_schema(fields: tuple[str, ...]) -> dict[str, pl.DataType]:
    """A released point: the event, then per field its value, EWMA and z-score."""
    out = pending_schema(fields)
    for f in fields:
        out |= {f"{f}_ewma": pl.Float64(), f"{f}_zscore": pl.Float64()}
    return {k: out[k] for k in ["entity_id", "event_time", "sequence", *point_columns(fields)]}


def point_columns(fields: tuple[str, ...]) -> list[str]:
    return [c for f in fields for c in (f, f"{f}_ewma", f"{f}_zscore")]


Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
_CODE_SHIFT = 42  # time offsets below 2**42 ms (139 years) fit under the entity code in one int64


@dataclass(frozen=True)
class _Released:
    """One field's released values sorted by (entity code, event_time, sequence, values), one
    segment per entity."""

    codes: Ints
    times: Ints
    values: Floats
    starts: Ints  # first row of each entity's segment
    ends: Ints  # one past its last row

    @classmethod
    def of(cls, codes: Ints, times: Ints, values: Floats) -> _Released:
        bounds = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        return cls(
            codes=codes,
            times=times,
            values=values,
            starts=np.concatenate(([0], bounds)),
            ends=np.concatenate((bounds, [codes.size])),
        )


def _encode(names: pl.Series, column: pl.Series) -> Ints:
    """Codes of ``column`` in ``names``; cast inside a frame query, which runs without the GIL."""
    code = pl.col(column.name).cast(pl.Enum(names)).to_physical().cast(pl.Int64)
    return column.to_frame().select(code).to_series().to_numpy()


def _order(ready: pl.DataFrame, codes: Ints, fields: tuple[str, ...]) -> npt.NDArray[np.intp]:
    """A stable sort on (code, time); only rows tied on both are re-sorted by (sequence, values)."""
    times = ready["event_time"].to_numpy()
    key = (codes << _CODE_SHIFT) | (times - times.min())
    order = entity_time_order(codes, times)
    sorted_key = key[order]
    tied = sorted_key[1:] == sorted_key[:-1]
    if tied.any():
        runs = np.zeros(key.size, dtype=bool)
        runs[1:] |= tied
        runs[:-1] |= tied
        positions = np.flatnonzero(runs)
        sub = order[positions]
        columns = [ready[f].to_numpy()[sub] for f in reversed(fields)]
        order[positions] = sub[np.lexsort((*columns, ready["sequence"].to_numpy()[sub], key[sub]))]
    return order


def _sorted_series(codes: Ints) -> pl.Series:
    """Codes already in ascending order, flagged so: a window ``over`` them groups by contiguous
    slices instead of hashing (the same groups in the same order, so the same sums)."""
    return pl.Series(codes).set_sorted()


def _ewma(released: _Released, seeds: Floats, alpha: float) -> Floats:
    """EWMA continuing from each entity's seed: the seed goes first in its segment, then is removed."""
    starts = released.starts
    values = np.insert(released.values, starts, seeds)
    groups = np.insert(released.codes, starts, released.codes[starts])
    ewm = pl.col("value").ewm_mean(alpha=alpha, adjust=False).over("group")
    frame = pl.DataFrame({"group": _sorted_series(groups), "value": values})
    smoothed = frame.select(ewm)["value"].to_numpy()
    return np.delete(smoothed, starts + np.arange(starts.size))


def _zscores(
    released: _Released, history: tuple[Ints, Ints, Floats], shift: Floats, window_ms: int
) -> tuple[Floats, Ints, Ints, Floats]:
    """z against the entity's values in ``[t - window, t)``; returns (z, history codes, times, values).

    Shifted sums: values minus the entity's EWMA before this release (``shift``, close to the
    local mean, so the variance keeps its digits), per-entity prefix sums, and a binary search
    for each window's start. History (stored in order) precedes the released events (sorted by
    time, sequence, value), and a stable sort keeps that, so every window sums in the same order
    on any run. The window end is the first row at time t, so ties at t are excluded.
    """
    codes = np.concatenate((history[0], released.codes))
    times = np.concatenate((history[1], released.times))
    values = np.concatenate((history[2], released.values))
    key = (codes << _CODE_SHIFT) | (times - times.min())
    order = np.argsort(key, kind="stable")
    key, codes = key[order], codes[order]
    x = values[order] - shift[codes]
    x2 = x * x
    sums = pl.DataFrame({"c": _sorted_series(codes), "x": x, "x2": x2}).select(
        pl.col("x", "x2").cum_sum().over("c")
    )
    p1, p2 = sums["x"].to_numpy() - x, sums["x2"].to_numpy() - x2
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    end = np.repeat(first, np.diff(np.append(first, key.size)))
    mine = np.flatnonzero(order >= history[0].size)  # history rows only feed the sums
    needle = np.maximum(key[mine] - window_ms, codes[mine] << _CODE_SHIFT)
    start, end, x = np.searchsorted(key, needle), end[mine], x[mine]
    n = (end - start).astype(np.float64)
    s1, s2 = p1[end] - p1[start], p2[end] - p2[start]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 - s1 * mean, 0.0) / (n - 1))
        z = np.where((n >= 2) & (std > 0), (x - mean) / std, np.nan)
    out = np.empty(released.codes.size, dtype=np.float64)
    out[order[mine] - history[0].size] = z
    return out, codes, times[order], values[order]


def _previous_ewma(names: pl.Series, entities: pl.DataFrame, released: _Released) -> tuple[Floats, Bools]:
    """Each entity's EWMA before this release, by code (a new entity's starts at its first value),
    and which codes have one after it."""
    known = np.zeros(names.len(), dtype=bool)
    previous = np.zeros(names.len(), dtype=np.float64)
    if entities.height:
        codes = _encode(names, entities["entity_id"])
        known[codes] = True
        previous[codes] = entities["ewma"].to_numpy()
    present = released.codes[released.starts]
    new = ~known[present]
    previous[present[new]] = released.values[released.starts[new]]
    known[present] = True
    return previous, known


def _release_field(
    names: pl.Series,
    released: _Released,
    past: pl.DataFrame,
    seen: pl.DataFrame,
    window_ms: int,
    alpha: float,
    since: int,
) -> tuple[Floats, Floats, pl.DataFrame, pl.DataFrame]:
    """One field's (EWMA, z-score) of its released values, and its new history (the values at or
    after ``since``, which later z-score windows can still reach) and entity rows."""
    shift, known = _previous_ewma(names, seen, released)
    present = released.codes[released.starts]
    ewma = _ewma(released, shift[present], alpha)
    history = (_encode(names, past["entity_id"]), past["event_time"].to_numpy(), past["value"].to_numpy())
    z, codes, times, values = _zscores(released, history, shift, window_ms)
    latest = shift.copy()
    latest[present] = ewma[released.ends - 1]
    keep = np.flatnonzero(times >= since)  # (before the names are gathered: most rows go)
    kept = pl.DataFrame(
        {"entity_id": names.gather(codes[keep]), "event_time": times[keep], "value": values[keep]}
    )
    return ewma, z, kept, pl.DataFrame({"entity_id": names.filter(pl.Series(known)), "ewma": latest[known]})


def release_points(
    pending: pl.DataFrame,
    history: pl.DataFrame,
    entities: pl.DataFrame,
    watermark_ms: int,
    *,
    fields: tuple[str, ...],
    alpha: float,
    window_ms: int,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Release pending events with ``t < W``: returns (points, pending, history, entities).

    Each field runs its own recursions over the events that carry it, in one shared order.
    """
    due = pending["event_time"] < watermark_ms
    ready, rest = pending.filter(due), pending.filter(~due)
    if ready.height == 0:
        return pl.DataFrame(schema=point_schema(fields)), rest, history, entities
    names = pl.concat([entities["entity_id"], ready["entity_id"].unique()]).unique().sort()
    all_codes = _encode(names, ready["entity_id"])
    order = _order(ready, all_codes, fields)
    codes, times = all_codes[order], ready["event_time"].to_numpy()[order]
    columns: dict[str, Any] = {
        "entity_id": names.gather(codes),
        "event_time": times,
        "sequence": ready["sequence"].to_numpy()[order],
    }
    histories, latest = [], []
    for f in fields:
        values = ready[f].to_numpy()[order]
        rows = np.flatnonzero(~np.isnan(values))
        whole = rows.size == values.size  # the usual case: every event carries the field
        mine = pl.col("field") == f
        past, seen = (
            (history, entities) if len(fields) == 1 else (history.filter(mine), entities.filter(mine))
        )
        ewma, z = np.full(values.size, np.nan), np.full(values.size, np.nan)
        if rows.size:
            picked = (codes, times, values) if whole else (codes[rows], times[rows], values[rows])
            released = _Released.of(*picked)
            since = watermark_ms - window_ms
            ewma[rows], z[rows], past, seen = _release_field(
                names, released, past, seen, window_ms, alpha, since
            )
            past = past.with_columns(pl.lit(f).alias("field"))
            seen = seen.with_columns(pl.lit(f).alias("field"))
        histories.append(past.select(list(HISTORY_SCHEMA)))
        latest.append(seen.select(list(ENTITY_SCHEMA)))
        columns |= {
            f: pl.Series(values) if whole else pl.Series(values).fill_nan(None),
            f"{f}_ewma": pl.Series(ewma) if whole else pl.Series(ewma).fill_nan(None),
            f"{f}_zscore": pl.Series(z).fill_nan(None),
        }
    points = pl.DataFrame(columns, schema=point_schema(fields))
    kept = histories[0] if len(fields) == 1 else pl.concat(histories, how="vertical")
    seen_all = latest[0] if len(fields) == 1 else pl.concat(latest, how="vertical")
    return points, rest, kept.cast(HISTORY_SCHEMA), seen_all.cast(ENTITY_SCHEMA)  # type: ignore[arg-type]
