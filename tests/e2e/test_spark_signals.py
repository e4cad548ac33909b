"""Signal backfills on Spark ``local[2]`` give the local backfill's rows (issue #19).

One Spark session serves the module (its JVM takes seconds to start): each backfill runs in this
process through the composition root, once locally and once with ``compute = "local[2]"``, over
the same input — two JSONL files with late events, duplicates, a string field and invalid
records, cut into several slices and buckets. Counts, min, max, revisions and the late table are
compared exactly; sums, means, std and z-scores to 1e-9. One test runs the CLI as a user would.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from headwater.compose import open_signal_pipeline, resolve_feature_set
from headwater.config import Settings, load_settings
from headwater.events import SignalRunCompleted
from headwater.models import Dataset
from headwater.ops.release import release

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[2]
FLOATS = ("_sum", "_mean", "_std", "_ewma", "_zscore")
CLIMATE: dict[str, Any] = {
    "windows": ["1s", "5s", "10s/5s"],
    "lateness": "1s",
    "correct_horizon": "30s",
    "features": {
        "temp": ["count", "sum", "mean", "min", "max", "std", "ewma", "zscore"],
        "humidity": ["count", "mean", "max"],
        "status": ["last", "count_distinct"],
    },
    "expectations": {
        "temp": {"min": 0, "max": 30, "on_fail": "dlq"},  # about 2% above: dead-lettered
        "status": {"allowed": ["ok", "warn"]},  # a third "fail": counted, kept
    },
}


@pytest.fixture(scope="module")
def spark_ready() -> None:
    """Spark needs pyspark and a Java runtime: a clear skip without them (a failure under CI)."""
    missing = [name for name, ok in (("pyspark", _has_pyspark()), ("java", shutil.which("java"))) if not ok]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Spark tests need {', '.join(missing)} (scripts/test installs them)")
        pytest.skip(f"Spark tests need {', '.join(missing)}")


def _has_pyspark() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return True


def write_inputs(folder: Path, events: int = 24_000, entities: int = 30, seed: int = 11) -> Path:
    """Two JSONL files in arrival order: jittered and very late events, 1% duplicates, a string field."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    clock = 1_700_000_000_000
    lines: list[str] = []
    for seq in range(events):
        clock += rng.randint(0, 3)
        delay = rng.choice([0, 5, 40]) if rng.random() < 0.97 else rng.randint(1_500, 40_000)
        payload: dict[str, Any] = {
            "temp": round(rng.gauss(20, 5), 3),
            "status": rng.choice(["ok", "warn", "fail"]),
        }
        if seq % 4:
            payload["humidity"] = round(rng.uniform(30, 60), 2)
        payload["note"] = {"unit": "C", "raw": seq}  # unused by the feature set: never invalidates
        event = {"entity_id": f"e{rng.randrange(entities):02d}", "event_time": clock - delay, "sequence": seq}
        lines.append(json.dumps({**event, "payload": payload}))
        if rng.random() < 0.01:
            lines.append(lines[rng.randrange(max(1, len(lines) - 200), len(lines))])
    n = len(lines)
    lines[n // 40] = '{"entity_id": "e01", "event_time": "yesterday", "sequence": 1}'
    lines[n // 3] = "not json at all"
    lines[n * 2 // 3] = json.dumps(
        {"entity_id": "e02", "event_time": clock, "sequence": 9, "payload": {"temp": "x"}}
    )
    half = len(lines) // 2
    (folder / "a.jsonl").write_text("\n".join(lines[:half]) + "\n")
    (folder / "b.jsonl").write_text("\n".join(lines[half:]))  # no final newline
    return folder


def settings_for(home: Path, policy: str, compute: str) -> Settings:
    declared = {**CLIMATE, "late_policy": policy}
    return load_settings(
        home=home, compute=compute, micro_batch_events=2_500, feature_sets={"climate": declared}, index=False
    )


async def backfill(settings: Settings, inputs: Path) -> SignalRunCompleted:
    spec = resolve_feature_set(settings, "climate")
    async with open_signal_pipeline(settings, inputs, spec, clock=lambda: 1_800_000_000_000) as pipeline:
        return await pipeline.run_async()


def stored(settings: Settings) -> dict[str, pl.DataFrame]:
    from headwater.compose import make_offline_store
    from headwater.stages.features import latest_rows

    offline = make_offline_store(settings)
    out = {}
    for dataset in Dataset:
        frame = asyncio.run(offline.read(dataset, "climate"))
        if dataset == Dataset.windows:
            frame = latest_rows(frame)
        columns = [c for c in frame.columns if c not in ("_part", "date", "_state")]
        out[dataset.value] = frame.select(columns).sort(columns, nulls_last=True)
    return out


def assert_same_rows(local: pl.DataFrame, spark: pl.DataFrame) -> None:
    assert local.height == spark.height > 0
    inexact = [c for c in local.columns if c.endswith(FLOATS)]
    exact = [c for c in local.columns if c not in inexact]
    assert_frame_equal(local.select(exact), spark.select(exact), check_exact=True)
    assert_frame_equal(local.select(inexact), spark.select(inexact), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("policy", ["drop", "correct", "hold"])
def test_spark_backfill_equals_local(spark_ready: None, tmp_path: Path, policy: str) -> None:
    inputs = write_inputs(tmp_path / "in")
    runs = {}
    for compute in ("local", "local[2]"):
        settings = settings_for(tmp_path / compute.replace("[", "-").rstrip("]"), policy, compute)
        final = asyncio.run(backfill(settings, inputs))
        runs[compute] = (final, stored(settings))
    (local, local_rows), (spark, spark_rows) = runs["local"], runs["local[2]"]
    for counter in (
        "events_seen",
        "events_invalid",
        "expectations_failed",
        "expectations_dead_lettered",
        "duplicates",
        "late_dropped",
        "late_corrected",
        "points_late",
    ):
        assert getattr(local, counter) == getattr(spark, counter), counter
    assert spark.events_invalid == 3 and spark.duplicates > 100 and spark.batches > 1
    assert spark.expectations_dead_lettered > 100 and spark.expectations_failed > 5_000
    assert (spark.late_corrected if policy == "correct" else spark.late_dropped) > 100
    # The windows' key order of the sort is the same in both: rows align one to one.
    for name in ("windows", "points", "late"):
        assert_same_rows(local_rows[name], spark_rows[name])
    if policy == "correct":
        assert local_rows["windows"]["revision"].max() > 0  # corrections really happened


def test_hold_then_release_on_spark_equals_local(spark_ready: None, tmp_path: Path) -> None:
    """``hold`` then ``features release``: the released rows of a Spark backfill are the local ones."""
    inputs = write_inputs(tmp_path / "in", events=12_000)
    homes = []
    for compute in ("local", "local[2]"):
        settings = settings_for(tmp_path / compute.replace("[", "-").rstrip("]"), "hold", compute)
        asyncio.run(backfill(settings, inputs))
        released = asyncio.run(release(settings, "climate"))
        assert released.events_released > 0 and released.windows_revised > 0
        homes.append(stored(settings)["windows"])
    assert homes[0]["revision"].max() > 0
    assert_same_rows(homes[0], homes[1])


def test_dead_letters_keep_the_original_records(spark_ready: None, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", events=6_000)
    settings = settings_for(tmp_path / "home", "drop", "local[2]")
    final = asyncio.run(backfill(settings, inputs))
    proc = hw("dlq", "list", "--home", str(tmp_path / "home"), "--json")
    letters = json.loads(proc.stdout)
    bad = ("yesterday", "not json", '"temp": "x"')
    expected = {
        f"{name}:line {number}": line
        for name in ("a.jsonl", "b.jsonl")
        for number, line in enumerate((inputs / name).read_text().splitlines(), start=1)
        if any(mark in line for mark in bad)
    }
    assert len(expected) == 3
    refs = {letter["input_ref"] for letter in letters}
    assert set(expected) <= refs
    assert len(refs) == len(letters) == final.events_invalid + final.expectations_dead_lettered
    assert all("expectation max=30 failed" in x["message"] for x in letters if x["input_ref"] not in expected)


def hw(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("HEADWATER_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_compute_spark_and_a_wrong_value(spark_ready: None, tmp_path: Path) -> None:
    samples = ROOT / "samples" / "signals"
    local = hw("ingest", "signals", str(samples), "--home", str(tmp_path / "a"), "--json")
    spark = hw(
        "ingest", "signals", str(samples), "--home", str(tmp_path / "b"), "--json", "--compute", "local[2]"
    )
    finals = [json.loads(p.stdout.splitlines()[-1]) for p in (local, spark)]
    for name in ("events_seen", "duplicates", "late_dropped", "feature_rows_written", "points_written"):
        assert finals[0][name] == finals[1][name], name
    assert spark.stderr.count("\n") < 10, spark.stderr  # Spark's own logging stays quiet
    wrong = hw(
        "ingest", "signals", str(samples), "--home", str(tmp_path / "c"), "--compute", "sparks", check=False
    )
    assert wrong.returncode == 3
    assert "compute 'sparks' is not an engine" in wrong.stderr and "Traceback" not in wrong.stderr
