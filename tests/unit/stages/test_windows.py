"""The window maths twice: the scalar formulas (the contract, in plain Python) and the Polars
expressions the engine runs must agree for every time and window shape, negative times included."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from headwater.featuresets import WindowSpec
from headwater.stages.windows import (
    assign_windows,
    is_late,
    last_window_end,
    last_window_end_expr,
    window_starts,
)

TIMES = st.lists(st.integers(-(10**12), 10**13), min_size=1, max_size=30)


@st.composite
def window_specs(draw: st.DrawFn) -> WindowSpec:
    slide = draw(st.sampled_from([1, 7, 1000, 5000, 60_000]))
    return WindowSpec(size_ms=slide * draw(st.integers(1, 6)), slide_ms=slide)


@given(TIMES, window_specs())
def test_assigned_windows_are_the_scalar_window_starts(times: list[int], spec: WindowSpec) -> None:
    frame = pl.DataFrame(
        {"event_time": times, "i": list(range(len(times)))}, schema={"event_time": pl.Int64, "i": pl.Int64}
    )
    assigned = assign_windows(frame, spec)
    for i, t in enumerate(times):
        got = sorted(assigned.filter(pl.col("i") == i)["window_start"].to_list())
        assert got == window_starts(t, spec)
        assert all(start <= t < start + spec.size_ms for start in got)


@given(TIMES, st.lists(window_specs(), min_size=1, max_size=3))
def test_last_window_end_expression_matches_the_scalar_one(times: list[int], specs: list[WindowSpec]) -> None:
    frame = pl.DataFrame({"event_time": times}, schema={"event_time": pl.Int64})
    ends = frame.select(last_window_end_expr("event_time", tuple(specs)))[:, 0].to_list()
    assert ends == [last_window_end(t, tuple(specs)) for t in times]


def test_a_window_is_late_once_the_watermark_reached_its_end() -> None:
    assert is_late(1000, 1000) and is_late(1000, 1001) and not is_late(1000, 999)
