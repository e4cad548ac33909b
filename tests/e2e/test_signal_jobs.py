"""A multi-field feature set declared once in headwater.toml serves ``ingest signals`` and a
``signals`` job alike: the job's rows equal the backfill's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

from tests.conftest import SAMPLES, Cli

DECLARATION = """
[feature_sets.plant]
windows = ["1s", "5s", "1m/10s"]
lateness = "2s"
late_policy = "correct"
[feature_sets.plant.features]
value = ["count", "mean", "std", "ewma", "zscore"]
rpm = ["mean", "max", "last"]
status = ["last", "count_distinct"]
"""


def hw(cwd: Path, cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args], cwd=cwd, env=cli.env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def exported(cwd: Path, cli: Cli, home: str, dataset: str) -> pl.DataFrame:
    out = cwd / f"{home}-{dataset}.parquet"
    hw(cwd, cli, "features", "export", "--home", home, "--feature-set", "plant", "--dataset", dataset,
       "--out", str(out))  # fmt: skip
    return pl.read_parquet(out)


def test_a_signals_job_fills_the_declared_multi_field_set_as_a_backfill_does(
    tmp_path: Path, cli: Cli
) -> None:
    (tmp_path / "headwater.toml").write_text(DECLARATION)
    shutil.copytree(SAMPLES / "signals", tmp_path / "signals")
    hw(tmp_path, cli, "ingest", "signals", "signals", "--home", "batch", "--feature-set", "plant")
    job_id = hw(tmp_path, cli, "jobs", "submit", "signals", "--kind", "signals", "--feature-set", "plant",
                "--home", "jobs").stdout.strip()  # fmt: skip
    hw(tmp_path, cli, "jobs", "run", "--home", "jobs")
    status = json.loads(hw(tmp_path, cli, "jobs", "status", job_id, "--home", "jobs", "--json").stdout)
    assert status["status"] == "succeeded", status
    for dataset in ("windows", "points"):
        batch, job = exported(tmp_path, cli, "batch", dataset), exported(tmp_path, cli, "jobs", dataset)
        assert batch.height > 0 and batch.equals(job), dataset
    windows = exported(tmp_path, cli, "batch", "windows")
    assert {"value_std", "rpm_max", "rpm_last", "status_count_distinct"} <= set(windows.columns)
    assert set(windows["status_last"].drop_nulls()) == {"ok", "high"}  # the strings as sent
