"""Window and watermark maths (DESIGN §5), as tiny pure functions shared by every engine.

Scalar versions state the contract in plain Python; the ``*_expr`` versions and
``assign_windows`` are the same formulas as Polars expressions for the vectorized engine
(tests/unit/stages/test_windows.py holds them to each other).
Times are integer milliseconds since the epoch, UTC; windows are half-open ``[start, end)`` and
aligned to the epoch.
"""

from __future__ import annotations

import polars as pl

from headwater.featuresets import WindowSpec

NO_WATERMARK = -(2**62)
"""The watermark before the first event: nothing is late."""
END_OF_INPUT = 2**62
"""The watermark a backfill advances to at the end of its input: everything closes."""


def window_starts(t_ms: int, spec: WindowSpec) -> list[int]:
    """Starts of every window of ``spec`` that contains ``t_ms`` (one for tumbling windows)."""
    last = (t_ms // spec.slide_ms) * spec.slide_ms
    starts = []
    start = last
    while start + spec.size_ms > t_ms:
        starts.append(start)
        start -= spec.slide_ms
    return sorted(starts)


def last_window_end(t_ms: int, specs: tuple[WindowSpec, ...]) -> int:
    """End of the last-closing window containing ``t_ms``: after it, every copy is late everywhere."""
    return max((t_ms // s.slide_ms) * s.slide_ms + s.size_ms for s in specs)


def is_late(window_end_ms: int, watermark_before_ms: int) -> bool:
    """Late for a window iff it was already closed when the event arrived (``end <= W_{i-1}``)."""
    return window_end_ms <= watermark_before_ms


def watermarks(event_times_ms: list[int], lateness_ms: int, max_before_ms: int | None) -> list[int]:
    """``W_i = max(t_0..t_i) - L`` for each event: a prefix max, never one value per batch."""
    out = []
    current = max_before_ms
    for t in event_times_ms:
        current = t if current is None else max(current, t)
        out.append(current - lateness_ms)
    return out


def watermark_before_expr(time_col: str, lateness_ms: int, max_before_ms: int | None) -> pl.Expr:
    """``W_{i-1}`` for each row of a batch in arrival order, continuing from earlier batches."""
    prefix_max = pl.col(time_col).cum_max()
    if max_before_ms is not None:
        prefix_max = pl.max_horizontal(prefix_max, pl.lit(max_before_ms, dtype=pl.Int64))
    previous = prefix_max.shift(1)
    first = NO_WATERMARK if max_before_ms is None else max_before_ms - lateness_ms
    return (previous - lateness_ms).fill_null(first)


def last_window_end_expr(time_col: str, specs: tuple[WindowSpec, ...]) -> pl.Expr:
    ends = [(pl.col(time_col) // s.slide_ms) * s.slide_ms + s.size_ms for s in specs]
    return pl.max_horizontal(ends) if len(ends) > 1 else ends[0]


def assign_windows(frame: pl.DataFrame, spec: WindowSpec, time_col: str = "event_time") -> pl.DataFrame:
    """Add ``window_start``: one row per (event, window containing it) — exploded for sliding windows."""
    last = (pl.col(time_col) // spec.slide_ms) * spec.slide_ms
    if spec.slide_ms == spec.size_ms:
        return frame.with_columns(last.alias("window_start"))
    span = spec.size_ms // spec.slide_ms + 1
    starts = pl.int_ranges(last - (span - 1) * spec.slide_ms, last + 1, spec.slide_ms)
    exploded = frame.with_columns(starts.alias("window_start")).explode("window_start")
    return exploded.filter(pl.col("window_start") + spec.size_ms > pl.col(time_col))
