"""Releasing held late events (stages/release.py) against a plain-Python reference and against ``correct``."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file, any import mode
from signal_reference import Ev, generate, stats, to_frame

from headwater.featuresets import FeatureSetSpec, FieldSpec, WindowSpec
from headwater.pipeline.signal_commit import late_frame
from headwater.stages.features import FEATURE_ROW_KEY, EngineState, flush, process_batch
from headwater.stages.release import held_rows, latest_rows, marker_rows, release_rows, summary

KEY = list(FEATURE_ROW_KEY)
AGGREGATES = ["value_count", "value_sum", "value_mean", "value_min", "value_max", "value_std"]
WINDOWS = ((1000, 1000), (5000, 5000), (10_000, 5000))


def make_spec(policy: str = "hold", version: int = 1, features: tuple[FieldSpec, ...] = ()) -> FeatureSetSpec:
    return FeatureSetSpec(
        name="fs",
        version=version,
        windows=tuple(WindowSpec(size_ms=a, slide_ms=b) for a, b in WINDOWS),
        late_policy=policy,  # type: ignore[arg-type]
        points=False,
        **({"features": features} if features else {}),  # type: ignore[arg-type]
    )


def reference_row(values: list[float]) -> dict[str, Any]:
    """The reference's statistics under the default field's column names."""
    return {f"value_{name}": value for name, value in stats(values).items()}


def stored_row(entity: str, size: int, start: int, values: list[float], revision: int) -> dict[str, Any]:
    """A window row as a ``hold`` run stores it: the declared columns and the partials."""
    row = reference_row(values)
    mean = row["value_mean"]
    state = {
        "n": len(values),
        "revision": revision,
        "value|count": len(values),
        "value|sum": row["value_sum"],
        "value|mean": mean,
        "value|m2": math.fsum((v - mean) ** 2 for v in values),
        "value|min": row["value_min"],
        "value|max": row["value_max"],
    }
    key = {
        "entity_id": entity,
        "feature_set": "fs",
        "version": 1,
        "window_ms": size,
        "window_start_ms": start,
    }
    return {**key, **row, "revision": revision, "_state": state}


def late_row(entity: str, t: int, seq: int, value: float, size: int, start: int, **kw: Any) -> dict[str, Any]:
    return {
        "entity_id": entity,
        "feature_set": "fs",
        "version": kw.get("version", 1),
        "event_time": t,
        "sequence": seq,
        "value": value,
        "extra": "",
        "window_ms": size,
        "window_start_ms": start,
        "watermark_ms": t + 10_000,
        "policy": kw.get("policy", "hold"),
        "reason": kw.get("reason", "window_closed"),
        "input_ref": f"in.jsonl:line {seq}",
        "content_hash": kw.get("content_hash", f"h-{entity}-{t}-{seq}"),
    }


def assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in AGGREGATES:
        if want[name] is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-9), name


@pytest.mark.parametrize("seed", range(8))
def test_release_equals_a_batch_computation_over_every_event(seed: int) -> None:
    """Random windows: some events counted on time (the stored row), the rest held; the revised
    row equals the statistics of all of them, and the revision moves as ``correct`` moves it."""
    rng = random.Random(seed)
    stored, late, want = [], [], {}
    for w in range(20):
        key = (f"e{w % 3}", 1000 * (1 + w % 2), 10_000 * w)
        on_time = [rng.gauss(1e6, 1.0) for _ in range(rng.randint(0, 6))]  # large offset: exactness
        held = [rng.gauss(1e6, 1.0) for _ in range(rng.randint(0 if on_time else 1, 4))]
        revision = rng.randint(0, 3) if on_time else 0
        if on_time:
            stored.append(stored_row(*key, on_time, revision))
        for i, value in enumerate(held):
            late.append(late_row(key[0], key[2] + i, 100 * w + i, value, key[1], key[2]))
        if held:
            expected_revision = revision + len(held) if on_time else len(held) - 1
            want[key] = (reference_row(on_time + held), expected_revision)
    rows = release_rows(held_rows(pl.DataFrame(late), pl.DataFrame()), pl.DataFrame(stored), make_spec())
    assert rows.height == len(want)
    for row in rows.iter_rows(named=True):
        aggregates, revision = want[(row["entity_id"], row["window_ms"], row["window_start_ms"])]
        assert_close(row, aggregates)
        assert row["revision"] == revision
        assert (row["feature_set"], row["version"]) == ("fs", 1)


def test_held_set_is_hold_window_rows_deduplicated_and_not_yet_released() -> None:
    late = pl.DataFrame(
        [
            late_row("a", 1500, 1, 2.0, 1000, 1000),
            late_row("a", 1500, 1, 2.0, 1000, 1000),  # the same event twice: counted once
            late_row("a", 1500, 1, 2.0, 5000, 0),  # the same event, another window it missed
            late_row("a", 1600, 2, 3.0, 1000, 1000, policy="drop"),
            late_row("a", 1700, 3, 4.0, 0, 1700, reason="point_late"),
            late_row("b", 900, 4, 5.0, 1000, 0),
        ]
    )
    held = held_rows(late, pl.DataFrame())
    assert held.select("entity_id", "window_ms", "window_start_ms").rows() == [
        ("b", 1000, 0),
        ("a", 1000, 1000),
        ("a", 5000, 0),
    ]
    info = summary(held)
    assert (info["held_events"], info["held_windows"], info["held_rows"]) == (2, 3, 3)
    assert info["oldest"]["event_time"] == 900
    # Once marked released, nothing is held: a second release has nothing to apply.
    marker = marker_rows(held, 1)
    assert held_rows(late, marker).height == 0
    assert summary(held_rows(late, marker))["oldest"] is None
    assert release_rows(held_rows(late, marker), pl.DataFrame(), make_spec()).height == 0
    # Partly released: only the rest is held.
    assert held_rows(late, marker_rows(held.head(1), 1)).height == 2


def test_versions_are_released_separately() -> None:
    late = pl.DataFrame(
        [late_row("a", 1500, 1, 2.0, 1000, 1000), late_row("a", 1500, 1, 2.0, 1000, 1000, version=2)]
    )
    stored = pl.DataFrame([stored_row("a", 1000, 1000, [4.0], 0)])  # version 1 only
    rows = release_rows(held_rows(late, pl.DataFrame()), stored, make_spec())
    by_version = {r["version"]: r for r in rows.iter_rows(named=True)}
    assert by_version[1]["value_count"] == 2 and by_version[1]["value_mean"] == 3.0
    assert by_version[1]["revision"] == 1
    assert by_version[2]["value_count"] == 1 and by_version[2]["revision"] == 0


def test_latest_rows_takes_the_highest_revision_then_the_latest_part() -> None:
    rows = pl.DataFrame(
        [
            {**stored_row("a", 1000, 0, [1.0], 2), "_part": "part-x-000001.parquet"},
            {**stored_row("a", 1000, 0, [1.0, 2.0], 3), "_part": "part-x-000000.parquet"},
            {**stored_row("a", 1000, 0, [9.0], 1), "_part": "release-000001.parquet"},
        ]
    )
    assert latest_rows(rows).select("value_count", "revision").rows() == [(2, 3)]


def _engine(events: list[Ev], spec: FeatureSetSpec, batch: int = 97) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(every emitted row, the late table rows as the offline store keeps them) of one run."""
    state, frame = EngineState(), to_frame(events)
    rows, late = [], []
    for offset in range(0, frame.height, batch):
        state, result = process_batch(state, frame.slice(offset, batch), spec)
        rows.append(result.rows)
        late.append(late_frame(spec, [], result.late, 0))
    state, result = flush(state, spec)
    rows.append(result.rows)
    late = [f for f in late if f.height]
    return pl.concat(rows), pl.concat(late, how="diagonal_relaxed") if late else pl.DataFrame()


@pytest.mark.parametrize("seed", range(4))
def test_hold_then_release_equals_correct_and_no_lateness(seed: int) -> None:
    """The engine under ``hold``, then a release, gives ``correct``'s rows (revisions included) and
    the rows of a run where nothing is late (aggregates)."""
    events = generate(seed, n=800, lateness=2000)
    held_run, late = _engine(events, make_spec("hold"))
    released = release_rows(held_rows(late, pl.DataFrame()), latest_rows(held_run), make_spec())
    after = latest_rows(pl.concat([held_run, released]))
    corrected = latest_rows(_engine(events, make_spec("correct"))[0])
    on_time_spec = msgspec_replace(make_spec("drop"), lateness_ms=10**9)
    no_late = latest_rows(_engine(events, on_time_spec)[0])
    assert released.height > 0
    for other, columns in ((corrected, [*AGGREGATES, "revision"]), (no_late, AGGREGATES)):
        left, right = after.sort(KEY), other.sort(KEY)
        assert left.select(KEY).equals(right.select(KEY))
        for name in columns:
            a, b = left[name].to_list(), right[name].to_list()
            assert a == pytest.approx(b, rel=1e-12, abs=1e-9, nan_ok=True) or a == b, name


def msgspec_replace(spec: FeatureSetSpec, **changes: Any) -> FeatureSetSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)


def test_under_hold_a_late_copy_of_a_counted_event_is_a_duplicate_not_held() -> None:
    """Dedup state outlives the windows by ``correct_horizon_ms`` under ``hold`` as under
    ``correct``: a re-delivered copy arriving after its windows closed is not held, so a release
    cannot count it twice."""
    base = 1_700_000_000_000
    first = Ev("a", base + 500, 1, 4.0)
    later = [Ev("a", base + 30_000 + i, 2 + i, 1.0) for i in range(3)]  # closes every window of `first`
    events = [first, *later, Ev("a", base + 500, 1, 4.0)]  # the copy, 30 s late
    state, frame, duplicates, late = EngineState(), to_frame(events), 0, 0
    for i in range(frame.height):  # one event a batch: the copy meets only the engine's state
        state, result = process_batch(state, frame.slice(i, 1), make_spec("hold"))
        duplicates, late = duplicates + result.duplicates, late + result.late.height
    assert (duplicates, late) == (1, 0)
