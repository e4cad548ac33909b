"""examples/great_expectations_check.py through the real Great Expectations (GX Core 1.x, in an
environment of its own: it pins its own pandas and pydantic): a backfill's offline windows pass
its suite, and a corrupted copy of them fails it, naming the broken expectations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl

from tests.conftest import ROOT, SAMPLES, Cli, missing

SCRIPT = ROOT / "examples" / "great_expectations_check.py"


def gx_python() -> str:
    found = os.environ.get("GX_PYTHON")
    if found and Path(found).exists():
        return found
    reason = "GX_PYTHON names no interpreter with great_expectations (scripts/test makes one: .venv-gx)"
    missing(reason, "Great Expectations test")


def check(python: str, home: Path, name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GX_ANALYTICS_ENABLED": "False"}
    return subprocess.run(
        [python, str(SCRIPT), str(home), name],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_great_expectations_validates_the_offline_windows(cli: Cli, tmp_path: Path) -> None:
    python = gx_python()
    home = tmp_path / "home"
    features = "value:count,mean,min,max,std"
    cli("ingest", "signals", str(SAMPLES / "signals"), "--home", str(home), "--features", features)
    done = check(python, home, "default", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["success"] and report["rows"] > 0
    kinds = {e["expectation"] for e in report["expectations"]}
    assert {
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_compound_columns_to_be_unique",
        "expect_column_pair_values_a_to_be_greater_than_b",
    } <= kinds

    # A copy whose means leave [min, max] and whose keys lose an entity: the suite says so.
    broken = tmp_path / "broken"
    shutil.copytree(home / "offline", broken / "offline")
    for part in (broken / "offline" / "windows").rglob("*.parquet"):
        rows = pl.read_parquet(part)
        rows.with_columns(
            (pl.col("value_max") + 1).alias("value_mean"),
            pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("entity_id")).alias("entity_id"),
        ).write_parquet(part)
    failed = check(python, broken, "default", tmp_path)
    assert failed.returncode == 1, failed.stderr[-3000:]
    report = json.loads(failed.stdout.strip().splitlines()[-1])
    bad = {
        (e["expectation"], e["kwargs"].get("column") or e["kwargs"].get("column_A"))
        for e in report["expectations"]
        if not e["success"]
    }
    assert ("expect_column_pair_values_a_to_be_greater_than_b", "value_max") in bad
    assert ("expect_column_values_to_not_be_null", "entity_id") in bad

    nothing = check(python, tmp_path / "empty", "default", tmp_path)
    assert nothing.returncode == 2 and "no windows rows" in nothing.stderr
