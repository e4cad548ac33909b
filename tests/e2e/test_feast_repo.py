"""``features feast-repo`` through the real Feast (its own virtual environment: Feast pins its
own pandas and pydantic): after ``apply`` and ``materialize``, ``get_online_features`` serves what
``features get`` serves, and ``get_historical_features`` gives, at each timestamp, the window
that had closed by then."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import SAMPLES, Cli, missing

FEAST_SCRIPT = r"""
import json, runpy, sys
from datetime import datetime, timezone
import pandas as pd
from feast import FeatureStore, FeatureView

definitions = runpy.run_path("features.py")
views = [v for v in definitions.values() if isinstance(v, FeatureView)]
store = FeatureStore(repo_path=".")
store.apply([definitions["entity"], *views])
store.materialize(datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
asked = json.loads(sys.argv[1])
refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
online = store.get_online_features(
    features=refs, entity_rows=[{"entity_id": e} for e in asked["entities"]], full_feature_names=True
).to_dict()
times = pd.to_datetime([t for _, t in asked["at"]], unit="ms", utc=True)
frame = pd.DataFrame({"entity_id": [e for e, _ in asked["at"]], "event_timestamp": times})
history = store.get_historical_features(entity_df=frame, features=refs, full_feature_names=True).to_df()
history["event_timestamp"] = history["event_timestamp"].astype("int64") // 10**6
print(json.dumps({"online": online, "history": history.to_dict(orient="records")}, default=str))
"""


def feast_python() -> str:
    found = os.environ.get("FEAST_PYTHON")
    if found and Path(found).exists():
        return found
    reason = "FEAST_PYTHON names no interpreter with feast (scripts/test makes one: .venv-feast)"
    missing(reason, "Feast test")


def test_feast_serves_what_headwater_serves(cli: Cli, tmp_path: Path) -> None:
    python = feast_python()
    home, repo = tmp_path / "home", tmp_path / "feast"
    features = "value:mean,max,count;rpm:mean"
    cli("ingest", "signals", str(SAMPLES / "signals"), "--home", str(home), "--features", features)
    made = cli("features", "feast-repo", "--home", str(home), "--out", str(repo))
    assert "feature view default_1m" in made.stderr
    cli("features", "export", "--home", str(home), "--out", str(tmp_path / "rows.parquet"))
    rows = pl.read_parquet(tmp_path / "rows.parquet")
    entities = sorted(rows["entity_id"].unique().to_list())
    minute = rows.filter(pl.col("window_ms") == 60_000).sort("entity_id", "window_start_ms")
    # Just after each 1m window ends, and just before: the row that had closed by then.
    ends = [(r["entity_id"], r["window_start_ms"] + 60_000) for r in minute.iter_rows(named=True)]
    asked = {"entities": entities, "at": [(e, t) for e, end in ends for t in (end, end - 1)]}
    env = {"FEAST_USAGE": "False", "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run(
        [python, "-c", FEAST_SCRIPT, json.dumps(asked)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    for i, entity in enumerate(served["online"]["entity_id"]):
        latest = cli.json_lines("features", "get", entity, "--home", str(home), "--json")[0]
        for row in latest:
            if row.get("kind") == "point" or "window_ms" not in row:
                continue
            view = {1000: "default_1s", 5000: "default_5s", 60000: "default_1m"}[row["window_ms"]]
            for name in ("value_mean", "value_max", "value_count", "rpm_mean"):
                assert served["online"][f"{view}__{name}"][i] == pytest.approx(row[name]), (
                    entity,
                    view,
                    name,
                )
    closed = {(r["entity_id"], r["window_start_ms"] + 60_000): r for r in minute.iter_rows(named=True)}
    for got in served["history"]:
        entity, at = got["entity_id"], got["event_timestamp"]
        ended = [end for (e, end) in closed if e == entity and end <= at]
        if not ended:
            assert (
                got["default_1m__value_count"] in (None, "nan")
                or got["default_1m__value_count"] != got["default_1m__value_count"]
            )
            continue
        want = closed[(entity, max(ended))]
        assert got["default_1m__value_count"] == want["value_count"], (entity, at)
        assert got["default_1m__value_mean"] == pytest.approx(want["value_mean"]), (entity, at)
