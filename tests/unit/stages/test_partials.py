"""The two ways partials are computed agree: the NumPy segment path of tumbling windows and the
general group-by path (sliding windows, corrections, releases), on data full of ties."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import polars as pl
import pytest

from headwater.featuresets import build_feature_set
from headwater.stages.features import batch_schema
from headwater.stages.partials import (
    KEY,
    merge_partials,
    partials,
)
from headwater.stages.tumbling import _distinct_cells, tumbling_partials
from headwater.stages.windows import NO_WATERMARK

SPEC = build_feature_set(
    "p",
    {
        "windows": ["1s"],
        "features": {
            "temp": ["count", "mean", "std", "last", "count_distinct"],
            "status": ["count", "last", "count_distinct"],
        },
    },
)


def events(seed: int, n: int = 400) -> pl.DataFrame:
    """Few entities, times from a narrow range (many share a millisecond), absent values."""
    rng = random.Random(seed)
    rows = [
        {
            "entity_id": rng.choice("ab"),
            "event_time": 1_000_000 + rng.randrange(0, 3000, 250),
            "sequence": rng.randrange(20),
            "temp": rng.choice([None, 1.5, 2.5, -0.0, 7.25, 1e6]),
            "status": rng.choice([None, "ok", "warn", "fail", "ok"]),
            "extra": "",
            "ce_key": None,
            "row": i,
        }
        for i in range(n)
    ]
    frame = pl.DataFrame(rows, schema=batch_schema(SPEC.features))
    return frame.with_columns(pl.lit(NO_WATERMARK, dtype=pl.Int64).alias("wm_before"))


def by_key(frame: pl.DataFrame) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for row in frame.iter_rows(named=True):
        key = tuple(row[k] for k in KEY)
        out[key] = {k: sorted(v) if isinstance(v, list) else v for k, v in row.items()}
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return bool(a == b)


@pytest.mark.parametrize("seed", range(6))
def test_segment_path_equals_group_by_path(seed: int) -> None:
    data = events(seed)
    fast = by_key(tumbling_partials(data, [1000], SPEC))
    assigned = data.with_columns(
        (pl.col("event_time") // 1000 * 1000).alias("window_start"),
        pl.lit(1000, dtype=pl.Int64).alias("window_ms"),
    )
    general = by_key(partials(assigned, SPEC))
    assert set(fast) == set(general)
    for key, row in general.items():
        for name, value in row.items():
            got, want = fast[key][name], value
            if name.endswith("|distinct"):
                got, want = got or [], want or []  # no values: an empty or a null list
            assert same(got, want), (key, name, got, want)


@pytest.mark.parametrize("seed", range(6))
def test_coarser_sizes_merged_from_finer_ones_equal_the_group_by_path(seed: int) -> None:
    """250 ms → 1 s → 3 s windows are each built from the finer size's windows, plus the rows late
    for it alone; 700 ms (no finer size divides it) from the rows. Watermarks that vary per row
    make every size keep another set of rows."""
    rng = random.Random(seed)
    data = events(seed).with_columns(
        pl.Series("wm_before", [1_000_000 + rng.randrange(-500, 3000) for _ in range(400)], dtype=pl.Int64)
    )
    sizes = [3000, 250, 700, 1000]
    fast = by_key(tumbling_partials(data, sizes, SPEC))
    general: dict[tuple[Any, ...], dict[str, Any]] = {}
    for size in sizes:
        assigned = data.with_columns(
            (pl.col("event_time") // size * size).alias("window_start"),
            pl.lit(size, dtype=pl.Int64).alias("window_ms"),
        ).filter(pl.col("window_start") + size > pl.col("wm_before"))
        general |= by_key(partials(assigned, SPEC))
    assert {key[1] for key in general} == set(sizes)  # (every size has windows, some rows are late)
    assert set(fast) == set(general)
    for key, row in general.items():
        for name, value in row.items():
            got, want = fast[key][name], value
            if name.endswith("|distinct"):
                got, want = got or [], want or []
            assert same(got, want), (key, name, got, want)


def test_last_is_the_greatest_time_then_sequence_then_value_whatever_the_arrival_order() -> None:
    rows = [
        ("a", 1500, 3, 1.0, "b"),
        ("a", 1500, 7, 2.0, "a"),
        ("a", 1500, 7, 0.5, "c"),  # same time and sequence: the greater value wins
        ("a", 1200, 9, 9.0, "z"),  # a greater sequence at an earlier time loses
        ("a", 1500, 2, None, None),
    ]
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        frame = pl.DataFrame(
            [
                {
                    "entity_id": e,
                    "event_time": t,
                    "sequence": s,
                    "temp": v,
                    "status": st,
                    "extra": "",
                    "ce_key": None,
                    "row": i,
                }
                for i, (e, t, s, v, st) in enumerate(rows[j] for j in order)
            ],
            schema=batch_schema(SPEC.features),
        ).with_columns(pl.lit(NO_WATERMARK, dtype=pl.Int64).alias("wm_before"))
        got = tumbling_partials(frame, [1000], SPEC).row(0, named=True)
        assert (got["temp|last"], got["temp|last_t"], got["temp|last_s"]) == (2.0, 1500, 7)
        assert got["status|last"] == "c"
        assert (got["temp|count"], got["status|count"], got["n"]) == (4, 4, 5)
        assert sorted(got["status|distinct"]) == ["a", "b", "c", "z"]
        halves = [
            tumbling_partials(frame.slice(0, 2), [1000], SPEC),
            tumbling_partials(frame.slice(2), [1000], SPEC),
        ]
        merged = merge_partials(SPEC, *halves).row(0, named=True)  # a merge picks the same
        assert (merged["temp|last"], merged["status|last"], sorted(merged["status|distinct"])) == (
            2.0,
            "c",
            ["a", "b", "c", "z"],
        )


@pytest.mark.parametrize(("segments", "distinct"), [(50, 5), (400, 3000)])  # a table of cells; a sort
def test_distinct_cells_are_each_segments_values_with_their_first_row(segments: int, distinct: int) -> None:
    rng = np.random.default_rng(segments)
    n = 4000
    of_row = np.sort(rng.integers(0, segments, n))
    of_row[:segments] = np.arange(segments)  # (every segment has a row)
    of_row.sort()
    codes = rng.integers(0, distinct, n)
    present = rng.random(n) < 0.8
    assert (segments * (int(codes.max()) + 1) > 4 * int(present.sum()) + 65_536) == (distinct > 1000)
    rows = rng.permutation(n)  # (a merge's cells come in any row order)
    where = np.flatnonzero(present)
    cells = _distinct_cells(of_row[where], codes[where], rows[where], segments)
    first: dict[tuple[int, int], int] = {}
    for i in where:
        cell = (int(of_row[i]), int(codes[i]))
        first[cell] = min(first.get(cell, n), int(rows[i]))
    expected = sorted(first)
    assert list(zip(cells.segment.tolist(), cells.code.tolist(), strict=True)) == expected
    assert cells.first.tolist() == [first[cell] for cell in expected]
