"""The ``headwater`` CLI on samples/signals and on bad input, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "signals"
KEY = ["entity_id", "feature_set", "version", "window_ms", "window_start_ms"]


def hw(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("HEADWATER_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def ingest_json(home: Path, path: Path, *extra: str, cwd: Path | None = None) -> list[dict[str, Any]]:
    proc = hw(
        "ingest",
        "signals",
        str(path),
        "--home",
        str(home),
        "--feature-set",
        "sensors",
        "--json",
        *extra,
        cwd=cwd,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_sample_backfill_get_and_export(tmp_path: Path) -> None:
    home = tmp_path / "hw"
    events = ingest_json(home, SAMPLES, "--windows", "1s,5s,1m", "--lateness", "2s", "--late-policy", "drop")
    assert events[0]["type"] == "RunStarted"
    final = events[-1]
    assert final["type"] == "RunCompleted"
    for name in (
        "events_seen",
        "events_invalid",
        "duplicates",
        "late_dropped",
        "late_corrected",
        "feature_rows_written",
    ):
        assert name in final
    assert final["events_seen"] == len(SAMPLES.joinpath("events.jsonl").read_text().splitlines())
    assert final["duplicates"] > 0
    assert final["late_dropped"] > 0

    got = json.loads(
        hw("features", "get", "pump-1", "--home", str(home), "--feature-set", "sensors", "--json").stdout
    )
    assert sorted(r["window_ms"] for r in got if r.get("kind") != "point") == [1000, 5000, 60_000]
    assert any(r.get("kind") == "point" and r["value_ewma"] is not None for r in got)

    out = tmp_path / "rows.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "sensors", "--out", str(out))
    rows = pl.read_parquet(out)
    for column in [*KEY, "value_count", "value_sum", "value_mean", "value_min", "value_max", "value_std"]:
        assert column in rows.columns
    assert rows.select(KEY).is_duplicated().sum() == 0
    assert rows.height == final["feature_rows_written"]
    # every deduplicated event is in exactly one window per size, or in the late table
    accepted = final["events_seen"] - final["events_invalid"] - final["duplicates"]
    late = Counter(e["window_ms"] for e in _late_rows(home))
    for size in (1000, 5000, 60_000):
        assert rows.filter(pl.col("window_ms") == size)["value_count"].sum() + late[size] == accepted


def _late_rows(home: Path) -> list[dict[str, Any]]:
    out = home / "late.parquet"
    hw(
        "features",
        "export",
        "--home",
        str(home),
        "--feature-set",
        "sensors",
        "--dataset",
        "late",
        "--out",
        str(out),
    )
    late = pl.read_parquet(out)
    assert late["content_hash"].str.len_chars().unique().to_list() == [64]
    assert late["input_ref"].str.starts_with("events.jsonl:line ").all()
    return late.filter(pl.col("window_ms") > 0).to_dicts()


def test_rerun_is_idempotent_and_plain_output(tmp_path: Path) -> None:
    home = tmp_path / "hw"
    hw("ingest", "signals", str(SAMPLES), "--home", str(home), "--feature-set", "sensors")
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "sensors", "--out", str(first))
    proc = hw("ingest", "signals", str(SAMPLES), "--home", str(home), "--feature-set", "sensors")
    assert "feature rows written:" in proc.stdout
    assert "\x1b[" not in proc.stderr  # no animation when not on a terminal
    hw("features", "export", "--home", str(home), "--feature-set", "sensors", "--out", str(second))
    assert pl.read_parquet(first).equals(pl.read_parquet(second))


def test_bad_input_goes_to_the_dlq(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = '{"entity_id":"a","event_time":1700000000000,"sequence":1,"value":1.5}'
    (inputs / "bad.jsonl").write_text(
        "\n".join(
            [
                good,
                '{"entity_id":"a","event_time":1700000000000,',
                '{"entity_id":"a","event_time":"2023-11-14T22:13:20Z","sequence":2,"value":NaN}',
                '{"entity_id":"a","event_time":"2023-11-14T22:13:20Z","sequence":"3","value":1}',
                '{"entity_id":"a","event_time":99999999999999,"sequence":4,"value":1}',
                '{"event_time":1700000000000,"sequence":5,"value":1}',
            ]
        )
        + "\n"
    )
    (inputs / "bad.csv").write_text("entity_id,event_time,sequence,value\na,1700000000001,1,inf\n")
    home = tmp_path / "hw"
    final = ingest_json(home, inputs)[-1]
    assert final["events_invalid"] == 6
    assert final["events_seen"] == 7
    letters = json.loads(hw("dlq", "list", "--home", str(home), "--json").stdout)
    refs = sorted(letter["input_ref"] for letter in letters)
    assert refs == [
        "bad.csv:line 2",
        "bad.jsonl:line 2",
        "bad.jsonl:line 3",
        "bad.jsonl:line 4",
        "bad.jsonl:line 5",
        "bad.jsonl:line 6",
    ]
    messages = " ".join(letter["message"] for letter in letters)
    for fragment in ("$.sequence", "$.entity_id", "future", "malformed", "finite"):
        assert fragment in messages
    assert all(letter["kind"] == "signal" for letter in letters)


def test_feature_set_declared_in_headwater_toml(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text(
        '[feature_sets.sensors]\nversion = 3\nwindows = ["10s"]\nlateness = "5s"\npolicy = "correct"\n'
    )
    home = tmp_path / "hw"
    final = ingest_json(home, SAMPLES, cwd=tmp_path)[-1]
    assert final["feature_set_version"] == 3
    assert final["late_corrected"] > 0
    out = tmp_path / "rows.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "sensors", "--out", str(out), cwd=tmp_path)
    rows = pl.read_parquet(out)
    assert rows["window_ms"].unique().to_list() == [10_000]
    assert rows["version"].unique().to_list() == [3]


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    proc = hw(
        "ingest", "signals", str(SAMPLES), "--home", str(tmp_path), "--late-policy", "maybe", check=False
    )
    assert proc.returncode == 2  # a choice of the option: click's one-line usage error
    assert "--late-policy" in proc.stderr and "Traceback" not in proc.stderr
