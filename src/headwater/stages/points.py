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

import numpy as np
import numpy.typing as npt
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

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
_CODE_SHIFT = 42  # time offsets below 2**42 ms (139 years) fit under the entity code in one int64


@dataclass(frozen=True)
class _Released:
    """Released events sorted by (entity code, event_time, sequence, value), one segment per entity."""

    codes: Ints
    times: Ints
    sequences: Ints
    values: Floats
    starts: Ints  # first row of each entity's segment
    ends: Ints  # one past its last row


def _encode(names: pl.Series, column: pl.Series) -> Ints:
    """Codes of ``column`` in ``names``; cast inside a frame query, which runs without the GIL."""
    code = pl.col(column.name).cast(pl.Enum(names)).to_physical().cast(pl.Int64)
    return column.to_frame().select(code).to_series().to_numpy()


def _sort_ready(ready: pl.DataFrame, codes: Ints) -> _Released:
    """A stable sort on (code, time); only rows tied on both are re-sorted by (sequence, value).

    Two stable passes, time (nearly sorted already: cheap) then code (small integers: a radix
    sort), give the same order as one stable sort on the combined key, faster.
    """
    times = ready["event_time"].to_numpy()
    sequences = ready["sequence"].to_numpy()
    values = ready["value"].to_numpy()
    key = (codes << _CODE_SHIFT) | (times - times.min())
    by_time = np.argsort(times, kind="stable")
    narrow = codes[by_time].astype(np.uint16 if codes.max() < 2**16 else np.int64)
    order = by_time[np.argsort(narrow, kind="stable")]
    sorted_key = key[order]
    tied = sorted_key[1:] == sorted_key[:-1]
    if tied.any():
        runs = np.zeros(key.size, dtype=bool)
        runs[1:] |= tied
        runs[:-1] |= tied
        positions = np.flatnonzero(runs)
        sub = order[positions]
        order[positions] = sub[np.lexsort((values[sub], sequences[sub], key[sub]))]
    codes = codes[order]
    bounds = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    return _Released(
        codes=codes,
        times=times[order],
        sequences=sequences[order],
        values=values[order],
        starts=np.concatenate(([0], bounds)),
        ends=np.concatenate((bounds, [codes.size])),
    )


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


def _previous_ewma(names: pl.Series, entities: pl.DataFrame, released: _Released) -> Floats:
    """Each entity's EWMA before this release, by code; a new entity's starts at its first value."""
    known = np.zeros(names.len(), dtype=bool)
    previous = np.zeros(names.len(), dtype=np.float64)
    if entities.height:
        codes = _encode(names, entities["entity_id"])
        known[codes] = True
        previous[codes] = entities["ewma"].to_numpy()
    present = released.codes[released.starts]
    new = ~known[present]
    previous[present[new]] = released.values[released.starts[new]]
    return previous


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
    due = pending["event_time"] < watermark_ms
    ready, rest = pending.filter(due), pending.filter(~due)
    if ready.height == 0:
        return pl.DataFrame(schema=POINT_SCHEMA), rest, history, entities
    names = pl.concat([entities["entity_id"], ready["entity_id"].unique()]).unique().sort()
    released = _sort_ready(ready, _encode(names, ready["entity_id"]))
    shift = _previous_ewma(names, entities, released)
    present = released.codes[released.starts]
    ewma = _ewma(released, shift[present], alpha)
    past = (
        _encode(names, history["entity_id"]),
        history["event_time"].to_numpy(),
        history["value"].to_numpy(),
    )
    z, codes, times, values = _zscores(released, past, shift, window_ms)
    latest = shift.copy()
    latest[present] = ewma[released.ends - 1]
    keep = times >= watermark_ms - window_ms
    points = pl.DataFrame(
        {
            "entity_id": names.gather(released.codes),
            "event_time": released.times,
            "sequence": released.sequences,
            "value": released.values,
            "ewma": ewma,
            "zscore": pl.Series(z).fill_nan(None),
        },
        schema=POINT_SCHEMA,
    )
    kept = pl.DataFrame(
        {"entity_id": names.gather(codes[keep]), "event_time": times[keep], "value": values[keep]},
        schema=HISTORY_SCHEMA,
    )
    return points, rest, kept, pl.DataFrame({"entity_id": names, "ewma": latest}, schema=ENTITY_SCHEMA)
