"""The engine imports nothing heavy on its first batch. pandas (when installed) and pyarrow.compute
came in lazily from inside the engine, 0.3 s and 0.06 s of a backfill's first batch: what a run
pays must show in its numbers, not in an import nobody asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")  # (the check means something only where pandas can be imported)

CHILD = """
import json, sys
import polars as pl
from headwater.featuresets import build_feature_set
from headwater.stages.features import EngineState, batch_schema, flush, process_batch

spec = build_feature_set("f", {
    "windows": ["1s", "5s/1s"], "lateness": "1s",
    "features": {
        "temp": ["count", "sum", "mean", "min", "max", "std", "last", "count_distinct", "ewma", "zscore"],
        "status": ["last", "count_distinct"],
    },
})
n = 5000
rows = {
    "entity_id": [f"e{i % 7}" for i in range(n)],
    "event_time": [1_000_000 + 37 * i - (i % 11) * 400 for i in range(n)],
    "sequence": list(range(n)),
    "temp": [float(i % 13) if i % 5 else None for i in range(n)],
    "status": [("ok", "warn", None)[i % 3] for i in range(n)],
    "extra": [""] * n, "ce_key": [None] * n, "row": list(range(n)),
}
batch = pl.DataFrame(rows, schema=batch_schema(spec.features))
before = set(sys.modules)
state, result = process_batch(EngineState(), batch.head(n // 2), spec)
state, result = process_batch(state, batch.tail(n - n // 2), spec)
state, tail = flush(state, spec)
assert result.rows.height and tail.rows.height and tail.points.height
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_batch_imports_neither_pandas_nor_pyarrow_compute() -> None:
    src = str(Path(__file__).resolve().parents[3] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    heavy = [m for m in imported if m.split(".")[0] == "pandas" or m.startswith("pyarrow.compute")]
    assert heavy == [], heavy
