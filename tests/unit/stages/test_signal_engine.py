"""The vectorized engine against the event-at-a-time reference, at several batch sizes."""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file, any import mode
from signal_reference import Ev, generate, run_reference, to_frame

from headwater.featuresets import FeatureSetSpec, WindowSpec
from headwater.stages.features import EngineState, flush, process_batch

TUMBLING = [(1000, 1000), (5000, 5000), (60_000, 60_000)]


def make_spec(windows: list[tuple[int, int]], policy: str = "drop", **kw: Any) -> FeatureSetSpec:
    return FeatureSetSpec(
        name="fs",
        windows=tuple(WindowSpec(size_ms=a, slide_ms=b) for a, b in windows),
        late_policy=policy,
        **kw,  # type: ignore[arg-type]
    )


def run_engine(events: list[Ev], spec: FeatureSetSpec, batch: int, roundtrip: bool = False) -> dict[str, Any]:
    state = EngineState()
    frame = to_frame(events)
    rows, late, points = [], [], []
    counters = {"duplicates": 0, "late_dropped": 0, "late_corrected": 0}
    for offset in range(0, frame.height, batch):
        if roundtrip:
            state = EngineState.from_bytes(state.to_bytes())
        state, result = process_batch(state, frame.slice(offset, batch), spec)
        rows.append(result.rows)
        late.append(result.late)
        points.append(result.points)
        for k in counters:
            counters[k] += getattr(result, k)
    state, result = flush(state, spec)
    rows.append(result.rows)
    points.append(result.points)
    return {
        "rows": unprefixed(pl.concat(rows)),
        "late": pl.concat(late),
        "points": unprefixed(pl.concat(points)),
        **counters,
    }


def unprefixed(frame: pl.DataFrame) -> pl.DataFrame:
    """The default feature set's columns (``value_mean``, ``value_ewma``) by aggregation alone,
    as the reference names them."""
    return frame.rename({c: c.removeprefix("value_") for c in frame.columns if c.startswith("value_")})


def final_rows(rows: pl.DataFrame) -> dict[tuple[str, int, int], dict[str, Any]]:
    out: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows.iter_rows(named=True):
        key = (r["entity_id"], r["window_ms"], r["window_start_ms"])
        if key not in out or r["revision"] >= out[key]["revision"]:
            out[key] = r
    return out


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def assert_rows_equal(
    got: dict[tuple[str, int, int], dict[str, Any]], want: dict[tuple[str, int, int], dict[str, Any]]
) -> None:
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:5]
    for key, w in want.items():
        g = got[key]
        assert g["count"] == w["count"], key
        for col in ("sum", "mean", "min", "max", "std"):
            assert close(g[col], w[col]), (key, col, g[col], w[col])
        assert g["revision"] == w["revision"], (key, g["revision"], w["revision"])


@pytest.mark.parametrize("batch", [1, 13, 100, 10_000])
@pytest.mark.parametrize("policy", ["drop", "hold", "correct"])
def test_rows_match_reference(batch: int, policy: str) -> None:
    events = generate(seed=batch + len(policy), n=150 if batch == 1 else 600)
    windows = [*TUMBLING, (4000, 1000)]
    spec = make_spec(windows, policy)
    got = run_engine(events, spec, batch, roundtrip=batch == 13)
    ref = run_reference(events, windows, 2000, policy)
    assert_rows_equal(final_rows(got["rows"]), ref.rows)
    assert got["duplicates"] == ref.duplicates
    late = sorted(
        (r["entity_id"], r["event_time"], r["window_ms"], r["window_start_ms"])
        for r in got["late"].filter(pl.col("window_ms") > 0).iter_rows(named=True)
    )
    assert late == sorted(ref.late)
    if policy == "correct":
        assert got["late_corrected"] > 0
    else:
        assert got["late_dropped"] == len(ref.late) > 0
        keys = got["rows"].select("entity_id", "window_ms", "window_start_ms")
        assert keys.is_duplicated().sum() == 0, "a window was emitted twice"


@pytest.mark.parametrize("batch", [1, 50, 10_000])
def test_points_match_reference(batch: int) -> None:
    events = generate(seed=7, n=150 if batch == 1 else 600)
    spec = make_spec(TUMBLING)
    got = run_engine(events, spec, batch)
    ref = run_reference(events, TUMBLING, 2000)
    pts = {
        (r["entity_id"], r["event_time"], r["sequence"], r["value"]): (r["ewma"], r["zscore"])
        for r in got["points"].iter_rows(named=True)
    }
    assert got["points"].height == len(ref.points)
    assert set(pts) == set(ref.points)
    for key, (ewma, z) in ref.points.items():
        assert close(pts[key][0], ewma, 1e-12), key
        assert close(pts[key][1], z, 1e-7), (key, pts[key][1], z)
    assert sum(1 for v in ref.points.values() if v[1] is not None) > 20


def test_std_is_exact_for_large_offsets() -> None:
    """Naive Σx² loses every digit here (cancellation); partials with Chan merges keep them."""
    events = [Ev("a", 1_000 + i, i, 1e6 + (i % 7) * 1e-3) for i in range(500)]
    xs = [e.value for e in events]
    naive = math.sqrt(max(0.0, (sum(x * x for x in xs) - sum(xs) ** 2 / len(xs)) / (len(xs) - 1)))
    assert not close(naive, statistics.stdev(xs), 1e-3)
    spec = make_spec([(60_000, 60_000)])
    got = final_rows(run_engine(events, spec, 37)["rows"])
    ref = run_reference(events, [(60_000, 60_000)], 2000)
    assert_rows_equal(got, ref.rows)


def test_cloudevents_id_dedups_different_payloads() -> None:
    events = [
        Ev("a", 1000, 1, 1.0, ce_key="src\x00id1"),
        Ev("a", 1001, 2, 2.0, ce_key="src\x00id1"),
        Ev("a", 1002, 3, 3.0, ce_key="src\x00id2"),
    ]
    got = run_engine(events, make_spec([(1000, 1000)]), 2)
    assert got["duplicates"] == 1
    assert final_rows(got["rows"])[("a", 1000, 1000)]["count"] == 2


def test_empty_windows_emit_nothing_and_windows_are_half_open() -> None:
    events = [Ev("a", 999, 1, 1.0), Ev("a", 1000, 2, 2.0), Ev("a", 9000, 3, 3.0)]
    rows = final_rows(run_engine(events, make_spec([(1000, 1000)]), 10)["rows"])
    assert sorted(rows) == [("a", 1000, 0), ("a", 1000, 1000), ("a", 1000, 9000)]
    assert rows[("a", 1000, 0)]["std"] is None


def test_zscore_keeps_its_digits_on_a_drifting_large_signal() -> None:
    """Shifted sums around the entity's EWMA: a 1e6 offset plus drift must not eat the variance."""
    rng = random.Random(3)
    events = [Ev("a", 1_000 + 250 * i, i, 1e6 + 0.5 * i + rng.gauss(0, 1e-2)) for i in range(800)]
    got = run_engine(events, make_spec([(60_000, 60_000)]), 97)
    ref = run_reference(events, [(60_000, 60_000)], 2000)
    pts = {
        (r["entity_id"], r["event_time"], r["sequence"], r["value"]): r["zscore"]
        for r in got["points"].iter_rows(named=True)
    }
    checked = 0
    for key, (_, z) in ref.points.items():
        assert close(pts[key], z, 1e-6), (key, pts[key], z)
        checked += z is not None
    assert checked > 700


def test_stream_style_incremental_batches_with_idle_flush_and_checkpoint() -> None:
    """A stream worker feeds batches as they come, checkpoints, restarts, and advances on idle."""
    events = generate(seed=21, n=300)
    spec = make_spec(TUMBLING)
    frame = to_frame(events)
    state = EngineState()
    emitted, late, dups = [], [], 0
    for offset in range(0, 200, 25):
        state, result = process_batch(EngineState.from_bytes(state.to_bytes()), frame.slice(offset, 25), spec)
        emitted.append(result.rows)
        late.append(result.late)
        dups += result.duplicates
    assert state.watermark_ms is not None
    idle_watermark = state.watermark_ms + 5000  # idle timeout: the watermark moves 5 s on its own
    state, idle = flush(state, spec, watermark=idle_watermark)
    emitted.append(idle.rows)
    assert idle.rows.height > 0
    assert state.open_windows.height > 0  # windows ending after the idle watermark stay open
    assert state.watermark_ms == idle_watermark  # monotone from here on
    state, rest = process_batch(state, frame.slice(200, 200), spec)
    dups += rest.duplicates
    state, final = flush(state, spec)
    rows = pl.concat([*emitted, rest.rows, final.rows])
    assert rows.select("entity_id", "window_ms", "window_start_ms").is_duplicated().sum() == 0
    assert rows.filter(pl.col("window_start_ms") + pl.col("window_ms") <= idle_watermark).height == (
        pl.concat(emitted).filter(pl.col("window_start_ms") + pl.col("window_ms") <= idle_watermark).height
    )  # nothing closed by the idle advance is ever emitted again
    all_late = pl.concat([*late, rest.late]).filter(pl.col("window_ms") > 0)
    for size, _ in TUMBLING:
        counted = rows.filter(pl.col("window_ms") == size)["value_count"].sum()
        assert counted + all_late.filter(pl.col("window_ms") == size).height == len(events) - dups


def test_hold_policy_keeps_late_events_marked_for_backfill() -> None:
    events = generate(seed=4)
    got = run_engine(events, make_spec(TUMBLING, "hold"), 50)
    late = got["late"].filter(pl.col("window_ms") > 0)
    assert late.height > 0
    assert set(late["policy"].to_list()) == {"hold"}
    assert set(late["reason"].to_list()) == {"window_closed"}
