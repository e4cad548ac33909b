"""Hypothesis properties of the engine (DESIGN §5), independent of batch boundaries."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file, any import mode
from signal_reference import Ev, to_frame
from test_signal_engine import TUMBLING, final_rows, make_spec, run_engine

LATENESS = 2000


@st.composite
def event_sets(draw: st.DrawFn) -> list[Ev]:
    n = draw(st.integers(5, 80))
    times = draw(st.lists(st.integers(0, 20_000), min_size=n, max_size=n))
    ents = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    vals = draw(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False).map(lambda x: round(x, 3)), min_size=n, max_size=n)
    )
    base = 1_700_000_000_000
    return [Ev(e, base + t, i, v) for i, (e, t, v) in enumerate(zip(ents, times, vals, strict=True))]


def arrival_orders(events: list[Ev], jitter: list[int]) -> list[Ev]:
    """Arrival order by event time + jitter in [0, L]: no event ever arrives later than the lateness bound."""
    keyed = sorted(range(len(events)), key=lambda i: (events[i].event_time + jitter[i % len(jitter)], i))
    return [events[i] for i in keyed]


def comparable(rows: pl.DataFrame) -> list[tuple[object, ...]]:
    return sorted(
        (
            k,
            r["count"],
            round(r["sum"], 6),
            round(r["min"], 6),
            round(r["max"], 6),
            None if r["std"] is None else round(r["std"], 6),
        )
        for k, r in final_rows(rows).items()
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sets(), st.lists(st.integers(0, LATENESS), min_size=1, max_size=50), st.integers(1, 40))
def test_reordering_within_lateness_gives_identical_rows(
    events: list[Ev], jitter: list[int], batch: int
) -> None:
    spec = make_spec(TUMBLING)
    in_order = run_engine(sorted(events, key=lambda e: (e.event_time, e.sequence)), spec, 1000)
    shuffled = run_engine(arrival_orders(events, jitter), spec, batch)
    assert shuffled["late"].height == 0
    assert comparable(shuffled["rows"]) == comparable(in_order["rows"])
    key = ["entity_id", "event_time", "sequence"]
    assert shuffled["points"].sort(key).select(key).equals(in_order["points"].sort(key).select(key))
    ewma = shuffled["points"].sort(key)["ewma"] - in_order["points"].sort(key)["ewma"]
    assert ewma.abs().max() is None or ewma.abs().max() < 1e-9  # type: ignore[operator]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sets(), st.randoms(use_true_random=False), st.integers(1, 40))
def test_drop_rows_and_late_table_account_for_every_event(events: list[Ev], rnd: object, batch: int) -> None:
    arrival = [*events, events[0], events[-1]]  # two exact duplicates
    rnd.shuffle(arrival)  # type: ignore[attr-defined]
    got = run_engine(arrival, make_spec(TUMBLING), batch)
    accepted = len(arrival) - got["duplicates"]
    assert got["duplicates"] >= 1
    rows = final_rows(got["rows"])
    late = Counter(got["late"].filter(pl.col("window_ms") > 0)["window_ms"].to_list())
    for size, _ in TUMBLING:
        counted = sum(r["count"] for (_, w, _), r in rows.items() if w == size)
        assert counted + late[size] == accepted, size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sets(), st.randoms(use_true_random=False), st.integers(1, 40))
def test_correct_final_rows_equal_batch_over_all_events(events: list[Ev], rnd: object, batch: int) -> None:
    arrival = list(events)
    rnd.shuffle(arrival)  # type: ignore[attr-defined]
    got = run_engine(arrival, make_spec(TUMBLING, "correct"), batch)
    frame = to_frame(events)
    for size, _ in TUMBLING:
        want = (
            frame.with_columns((pl.col("event_time") // size * size).alias("start"))
            .group_by("entity_id", "start")
            .agg(pl.len().alias("n"), pl.col("value").sum().alias("s"), pl.col("value").std().alias("sd"))
        )
        rows = {(k[0], k[2]): r for k, r in final_rows(got["rows"]).items() if k[1] == size}
        assert len(rows) == want.height
        for r in want.iter_rows(named=True):
            row = rows[(r["entity_id"], r["start"])]
            assert row["count"] == r["n"]
            assert abs(row["sum"] - r["s"]) <= 1e-6 * max(1.0, abs(r["s"]))
            assert (row["std"] is None) == (r["sd"] is None)
            if r["sd"] is not None:
                assert abs(row["std"] - r["sd"]) <= 1e-6 * max(1.0, r["sd"])
