"""Issue #19: data-quality expectations declared in headwater.toml, through the CLI as a user runs it.

``dlq`` expectations remove the failing events before the windows and dead-letter them with
their original line; ``warn`` keeps and counts them; the run's counters, events and the DLQ agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.test_signals_cli import hw

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a 1-minute window holds every event below
LINES = [
    {"temp": 20.0, "humidity": 40.0, "status": "ok"},
    {"temp": 75.2, "humidity": 41.0, "status": "ok"},  # above max
    {"temp": 21.0, "status": "warn"},  # no humidity: not_null (warn only)
    {"temp": 22.0, "humidity": 42.0, "status": "broken"},  # not allowed
    {"temp": 60, "humidity": 43.0, "status": 1},  # max is inclusive; 1 is allowed
]


def declaration(on_fail: str) -> str:
    return f"""
[feature_sets.climate]
windows = ["1m"]
[feature_sets.climate.features]
temp = ["count", "max"]
humidity = ["count"]
status = ["count", "last"]
[feature_sets.climate.expectations]
temp = {{ min = -40, max = 60, on_fail = "{on_fail}" }}
humidity = {{ not_null = true }}
status = {{ allowed = ["ok", "warn", "fail", 1], on_fail = "{on_fail}" }}
freshness = "10m"
"""


def run(tmp_path: Path, on_fail: str) -> tuple[Path, list[str], list[dict[str, Any]], pl.DataFrame]:
    (tmp_path / "headwater.toml").write_text(declaration(on_fail))
    lines = [
        json.dumps({"entity_id": "room-1", "event_time": T0 + i * 1000, "sequence": i, "payload": p})
        for i, p in enumerate(LINES)
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    home = tmp_path / "hw"
    proc = hw("ingest", "signals", "events.jsonl", "--home", str(home), "--feature-set", "climate", "--json",
              cwd=tmp_path)  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    out = tmp_path / "rows.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "climate", "--out", str(out), cwd=tmp_path)
    return home, lines, events, pl.read_parquet(out)


def test_dlq_expectations_dead_letter_the_original_records_and_leave_the_windows(tmp_path: Path) -> None:
    home, lines, events, rows = run(tmp_path, "dlq")
    final = events[-1]
    assert final["type"] == "RunCompleted"
    assert final["events_seen"] == 5 and final["events_invalid"] == 0
    assert final["expectations_dead_lettered"] == 2
    assert final["expectations_failed"] == 3  # temp max, status allowed (dlq), humidity not_null (warn)
    [failed] = [e for e in events if e["type"] == "ExpectationsFailed"]
    assert failed["feature_set"] == "climate" and failed["dead_lettered"] == 2
    assert {(f["field"], f["expectation"], f["on_fail"], f["count"]) for f in failed["failures"]} == {
        ("temp", "max", "dlq", 1),
        ("status", "allowed", "dlq", 1),
        ("humidity", "not_null", "warn", 1),
    }  # no freshness: a backfill replays history and skips it
    rejected = [(e["input_ref"], e["field"], e["reason"]) for e in events if e["type"] == "SignalRejected"]
    assert rejected == [
        ("events.jsonl:line 2", "temp", "expectation max=60 failed: 75.2"),
        ("events.jsonl:line 4", "status", "expectation allowed=['ok', 'warn', 'fail', '1'] failed: 'broken'"),
    ]
    assert rows.height == 1
    assert rows.select("temp_count", "temp_max", "humidity_count", "status_count").row(0) == (3, 60.0, 2, 3)

    letters = json.loads(hw("dlq", "list", "--home", str(home), "--json").stdout)
    by_ref = {lt["input_ref"]: lt for lt in letters}
    assert set(by_ref) == {"events.jsonl:line 2", "events.jsonl:line 4"}
    assert by_ref["events.jsonl:line 2"]["message"] == "temp: expectation max=60 failed: 75.2"
    assert by_ref["events.jsonl:line 2"]["stage"] == "expectations"
    letter_id = str(by_ref["events.jsonl:line 2"]["id"])
    shown = json.loads(hw("dlq", "show", letter_id, "--home", str(home)).stdout)
    assert shown["payload"] == lines[1]  # the original line, as it was in the input


def test_warn_expectations_keep_the_records_and_count_them(tmp_path: Path) -> None:
    home, _, events, rows = run(tmp_path, "warn")
    final = events[-1]
    assert final["expectations_failed"] == 3 and final["expectations_dead_lettered"] == 0
    assert not [e for e in events if e["type"] == "SignalRejected"]
    assert rows.select("temp_count", "temp_max", "humidity_count", "status_count").row(0) == (5, 75.2, 4, 5)
    assert json.loads(hw("dlq", "list", "--home", str(home), "--json").stdout) == []


def test_the_plain_output_shows_one_line_per_batch_and_the_summary_counts(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text(declaration("dlq"))
    (tmp_path / "e.jsonl").write_text(
        json.dumps({"entity_id": "r", "event_time": T0, "sequence": 1, "payload": {"temp": 99.5}}) + "\n"
    )
    proc = hw("ingest", "signals", "e.jsonl", "--home", "hw", "--feature-set", "climate", cwd=tmp_path)
    assert "expectations failed (batch 0): temp max 1 dlq, humidity not_null 1 warn; 1 dead-lettered" in (
        proc.stderr
    )
    assert "expectations failed: 2" in proc.stdout and "expectations dead lettered: 1" in proc.stdout


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('temp = { max = 60, on_fail = "drop" }', 'on_fail must be "warn" or "dlq", got \'drop\''),
        ("pressure = { max = 1 }", "'pressure' is not a field of the feature set"),
        ("temp = { min = 10, max = 0 }", "min 10 > max 0"),
    ],
)
def test_a_bad_declaration_is_one_line_and_exit_code_3(tmp_path: Path, table: str, message: str) -> None:
    text = f'[feature_sets.climate.features]\ntemp = ["max"]\n[feature_sets.climate.expectations]\n{table}\n'
    (tmp_path / "headwater.toml").write_text(text)
    (tmp_path / "e.jsonl").write_text("")
    proc = hw("ingest", "signals", "e.jsonl", "--home", "hw", "--feature-set", "climate", cwd=tmp_path,
              check=False)  # fmt: skip
    assert proc.returncode == 3 and message in proc.stderr  # a configuration error
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
