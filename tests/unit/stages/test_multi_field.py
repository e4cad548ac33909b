"""Feature sets with several fields: the engine against the event-at-a-time reference, per field.

Events carry ``temp`` (always), ``humidity`` (a quarter lack it), ``status`` (a string; some lack
it) and undeclared fields. The reference decides dedup, lateness and revisions per event (as for
one field) and computes each field's statistics over the counted events that carry it.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file, any import mode
from signal_reference import Ev, _points, events_for_points, generate, run_reference
from test_signal_engine import final_rows

from headwater.featuresets import FeatureSetSpec, build_feature_set
from headwater.stages.features import EngineState, batch_schema, flush, process_batch
from headwater.stages.release import held_rows, latest_rows, release_rows

WINDOWS = [(1000, 1000), (5000, 5000), (10_000, 5000)]
FEATURES = {
    "temp": ["count", "sum", "mean", "min", "max", "std", "last", "ewma", "zscore"],
    "humidity": ["count", "mean", "max", "ewma"],
    "status": ["count", "last", "count_distinct"],
}


def spec(policy: str = "drop") -> FeatureSetSpec:
    windows = [f"{a}ms" if a == b else f"{a}ms/{b}ms" for a, b in WINDOWS]
    return build_feature_set("climate", {"windows": windows, "policy": policy, "features": FEATURES})


def payload(ev: Ev) -> dict[str, Any]:
    """A deterministic payload per sequence number (exact copies share it)."""
    rng = random.Random(ev.sequence)
    out: dict[str, Any] = {"temp": ev.value, "unit": "C", "raw": {"ok": rng.random() < 0.5}}
    if rng.random() < 0.75:
        out["humidity"] = round(rng.uniform(20, 80), 3)
    if rng.random() < 0.9:
        out["status"] = rng.choice(["ok", "warn", "fail"])
    return out


def with_payloads(events: list[Ev]) -> list[Ev]:
    """The reference compares identity on (entity, time, sequence, value, extra): the payload's
    other fields go in ``extra``, so it dedups exactly as the engine does."""
    out = []
    for ev in events:
        rest = {k: v for k, v in payload(ev).items() if k != "temp"}
        out.append(Ev(ev.entity_id, ev.event_time, ev.sequence, ev.value, json.dumps(rest, sort_keys=True)))
    return out


def frame(events: list[Ev]) -> pl.DataFrame:
    rows = []
    for i, ev in enumerate(events):
        p = payload(ev)
        undeclared = json.dumps({"raw": p["raw"], "unit": p["unit"]}, sort_keys=True)
        rows.append(
            {
                "entity_id": ev.entity_id,
                "event_time": ev.event_time,
                "sequence": ev.sequence,
                "temp": p["temp"],
                "humidity": p.get("humidity"),
                "status": p.get("status"),
                "extra": undeclared,
                "ce_key": None,
                "row": i,
            }
        )
    return pl.DataFrame(rows, schema=batch_schema(spec().features))


def run(events: list[Ev], fs: FeatureSetSpec, batch: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    state, data = EngineState(), frame(events)
    rows, late, points = [], [], []
    for offset in range(0, data.height, batch):
        state = EngineState.from_bytes(state.to_bytes())  # checkpoints on every batch
        state, result = process_batch(state, data.slice(offset, batch), fs)
        rows.append(result.rows)
        late.append(result.late)
        points.append(result.points)
    state, result = flush(state, fs)
    return pl.concat([*rows, result.rows]), pl.concat(late), pl.concat([*points, result.points])


def reference_columns(members: list[Ev]) -> dict[str, Any]:
    loads = [(ev, payload(ev)) for ev in members]
    out: dict[str, Any] = {}
    temps = [p["temp"] for _, p in loads]
    out |= {
        "temp_count": len(temps),
        "temp_sum": math.fsum(temps),
        "temp_mean": math.fsum(temps) / len(temps),
    }
    out |= {"temp_min": min(temps), "temp_max": max(temps)}
    out["temp_std"] = statistics.stdev(temps) if len(temps) >= 2 else None
    out["temp_last"] = max((ev.event_time, ev.sequence, p["temp"]) for ev, p in loads)[2]
    hums = [p["humidity"] for _, p in loads if "humidity" in p]
    out["humidity_count"] = len(hums)
    out["humidity_mean"] = math.fsum(hums) / len(hums) if hums else None
    out["humidity_max"] = max(hums) if hums else None
    statuses = [(ev.event_time, ev.sequence, p["status"]) for ev, p in loads if "status" in p]
    out["status_count"] = len(statuses)
    out["status_last"] = max(statuses)[2] if statuses else None
    out["status_count_distinct"] = len({s for _, _, s in statuses})
    return out


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


@pytest.mark.parametrize("policy", ["drop", "correct"])
@pytest.mark.parametrize("batch", [7, 37, 5000])
def test_every_field_matches_the_reference(policy: str, batch: int) -> None:
    events = generate(seed=7, n=500, entities=3)
    fs = spec(policy)
    rows, _, _ = run(events, fs, batch)
    ref = run_reference(with_payloads(events), WINDOWS, fs.lateness_ms, policy, fs.correct_horizon_ms)
    got = final_rows(rows)
    assert set(got) == set(ref.members)
    assert list(rows.columns) == [
        *("entity_id", "feature_set", "version", "window_ms", "window_start_ms"),
        *fs.window_columns,
        "revision",
    ]  # only what was declared: no humidity_sum, no m2
    for key, members in ref.members.items():
        want = reference_columns(members)
        for name, value in want.items():
            assert close(got[key][name], value), (key, name, got[key][name], value)
        assert got[key]["revision"] == ref.rows[key]["revision"], key


def test_points_per_field_over_the_events_that_carry_it() -> None:
    events = generate(seed=11, n=400, entities=2)
    fs = spec()
    _, _, points = run(events, fs, 53)
    ref = run_reference(with_payloads(events), WINDOWS, fs.lateness_ms)
    released = events_for_points(with_payloads(events), ref, fs.lateness_ms)
    assert set(points.columns) >= {"temp_ewma", "temp_zscore", "humidity_ewma"}
    assert "status_ewma" not in points.columns
    for field in ("temp", "humidity"):
        carrying = [
            Ev(ev.entity_id, ev.event_time, ev.sequence, payload(ev)[field])
            for ev in released
            if field in payload(ev)
        ]
        want = _points(carrying, fs.ewma_alpha, fs.zscore_window_ms)
        got = points.filter(pl.col(field).is_not_null())
        assert got.height == len(want)
        for row in got.iter_rows(named=True):
            ewma, _ = want[(row["entity_id"], row["event_time"], row["sequence"], row[field])]
            assert math.isclose(row[f"{field}_ewma"], ewma, rel_tol=1e-9), (field, row)


def test_hold_then_release_equals_correct_for_every_field() -> None:
    from headwater.pipeline.signal_commit import late_frame

    events = generate(seed=3, n=600, entities=3)
    held_run, late, _ = run(events, spec("hold"), 71)
    late_table = late_frame(spec("hold"), [], late, 0)
    released = release_rows(held_rows(late_table, pl.DataFrame()), latest_rows(held_run), spec("hold"))
    assert released.height > 0
    after = final_rows(latest_rows(pl.concat([held_run, released], how="vertical_relaxed")).drop("_state"))
    corrected = final_rows(run(events, spec("correct"), 71)[0])
    assert set(after) == set(corrected)
    for key, row in corrected.items():
        for name, value in row.items():
            assert close(after[key][name], value), (key, name, after[key][name], value)


def test_a_string_field_never_changes_the_numeric_rows() -> None:
    """The same events with and without a declared string field: the numeric columns agree."""
    events = generate(seed=5, n=300, entities=2)
    numeric = build_feature_set(
        "n", {"windows": ["1s", "5s"], "features": {"temp": ["count", "mean", "std"]}}
    )
    both = build_feature_set(
        "n", {"windows": ["1s", "5s"], "features": {"temp": ["count", "mean", "std"], "status": ["last"]}}
    )
    data = frame(events)
    outputs = []
    for fs in (numeric, both):
        state, result = process_batch(EngineState(), data.select(list(batch_schema(fs.features))), fs)
        state, final = flush(state, fs)
        outputs.append(
            pl.concat([result.rows, final.rows]).select(
                "entity_id", "window_ms", "window_start_ms", "temp_count", "temp_mean", "temp_std"
            )
        )
    assert (
        outputs[0]
        .sort("entity_id", "window_ms", "window_start_ms")
        .equals(outputs[1].sort("entity_id", "window_ms", "window_start_ms"))
    )
