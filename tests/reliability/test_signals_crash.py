"""kill -9 during a signal backfill, then the same command: stores equal those of one clean run."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from headwater.adapters.parquet import ParquetOfflineStore
from headwater.ops.features import export_rows

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_signals", ROOT / "bench" / "signals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIMATE = "temp:count,mean,std,ewma,zscore;humidity:mean,max;status:last,count_distinct"


def command(inputs: Path, home: Path) -> list[str]:
    features = ["--features", CLIMATE] if inputs.name == "climate" else []
    return [
        sys.executable,
        "-m",
        "headwater.cli",
        "ingest",
        "signals",
        str(inputs),
        "--home",
        str(home),
        "--feature-set",
        "sensors",
        "--batch-events",
        "3000",
        "--json",
        *features,
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "POLARS_MAX_THREADS": "2",
        "HEADWATER_CHECKPOINT_INTERVAL_SECONDS": "0",
    }


def committed_batches(home: Path) -> int:
    try:
        with sqlite3.connect(f"file:{home / 'features.db'}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT max(next_batch) FROM signal_checkpoints").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


def kill_after(inputs: Path, home: Path, batches: int) -> None:
    proc = subprocess.Popen(
        command(inputs, home), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while committed_batches(home) < batches and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: make the input bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def stores(home: Path) -> tuple[pl.DataFrame, pl.DataFrame, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(exported windows, exported points, online rows + points, late events)."""
    offline = ParquetOfflineStore(str(home / "offline"))
    windows = asyncio.run(export_rows(offline, "sensors"))
    points = asyncio.run(export_rows(offline, "sensors", dataset="points"))
    late = asyncio.run(export_rows(offline, "sensors", dataset="late"))
    with sqlite3.connect(home / "features.db") as conn:
        online = conn.execute("SELECT * FROM feature_rows ORDER BY 1, 2, 3, 4, 5").fetchall()
        online += conn.execute("SELECT * FROM point_features ORDER BY 1, 2, 3").fetchall()
    assert windows.select("entity_id", "window_ms", "window_start_ms").is_duplicated().sum() == 0
    return windows, points, online, late.rows()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("signals")
    _bench().generate(folder / "events", 80_000, entities=50, part_rows=40_000)
    return folder / "events"


@pytest.fixture(params=["events", "climate"])
def inputs(request: pytest.FixtureRequest, events: Path) -> Path:
    """Parquet with one field, or the same events as JSONL with a multi-field payload (temp,
    humidity missing from some, a status string, an undeclared unit) read by a multi-field set."""
    if request.param == "events":
        return events
    climate = events.parent / "climate"
    if not climate.exists():
        _bench().climate_jsonl(events, climate)
    return climate


def test_kill_9_then_rerun_equals_one_clean_run(tmp_path: Path, inputs: Path) -> None:
    clean_home = tmp_path / "clean"
    subprocess.run(command(inputs, clean_home), env=env(), check=True, capture_output=True)
    crashed_home = tmp_path / "crashed"
    kill_after(inputs, crashed_home, batches=3)
    kill_after(inputs, crashed_home, batches=committed_batches(crashed_home) + 4)  # killed again mid-resume
    done = subprocess.run(
        command(inputs, crashed_home), env=env(), check=True, capture_output=True, text=True
    )
    assert '"resumed_from_batch":0' not in done.stdout.splitlines()[-1]
    clean, crashed = stores(clean_home), stores(crashed_home)
    assert crashed[0].equals(clean[0])
    assert crashed[1].equals(clean[1])
    assert crashed[2] == clean[2]
    assert crashed[3] == clean[3]
    assert clean[0].height > 3000
    assert clean[1].height > 50_000
    assert len(clean[3]) > 100
    if inputs.name == "climate":
        assert {"temp_std", "humidity_max", "status_last", "status_count_distinct"} <= set(clean[0].columns)
        assert {"temp", "temp_ewma", "temp_zscore"} <= set(clean[1].columns)
        assert "humidity" not in clean[1].columns  # no point aggregation declared for it
