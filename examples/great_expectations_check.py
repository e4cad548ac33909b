"""Validate a feature set's offline ``windows`` dataset with Great Expectations (GX Core 1.x), after
a backfill: keys never null, at least one row, one row per key, counts >= 0, std >= 0, and each
field's ``mean`` between its ``min`` and its ``max``.

    headwater ingest signals ./events --home ./.hw --feature-set sensors
    python examples/great_expectations_check.py ./.hw sensors        # exit 0: valid, 1: not

GX pins its own pandas, numpy and pydantic ranges: run this in an environment of its own
(``pip install -r constraints/great_expectations.txt``; tests/e2e/test_great_expectations.py
runs it with ``GX_PYTHON``). headwater is not needed there: the script reads the home's Parquet
files (``offline/windows/feature_set=NAME/date=*/part-*.parquet``) with pandas. A corrected
window (policy ``correct``) has a row per revision; the newest is the row, as
``headwater features export`` has it. Declared per-event expectations
(``[feature_sets.NAME.expectations]``) are checked while ingesting; this is the whole-table
check a batch run adds afterwards. Runs offline: GX's usage analytics are turned off.

Prints one JSON object (``success``, ``rows``, each expectation's outcome) and exits 1 when any
expectation fails, 2 when there is nothing to validate.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # before GX is imported: no network calls

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

KEY = ["entity_id", "feature_set", "version", "window_ms", "window_start_ms"]


def load_windows(home: Path, feature_set: str) -> pd.DataFrame:
    """Every window row of the feature set, the newest revision of each key."""
    parts = sorted((home / "offline" / "windows" / f"feature_set={feature_set}").glob("date=*/*.parquet"))
    if not parts:
        return pd.DataFrame(columns=KEY)
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("_")])  # _state: not a feature
    newest = frame.sort_values("revision").drop_duplicates(subset=KEY, keep="last")
    return newest.sort_values(KEY).reset_index(drop=True)


def expectations(columns: list[str]) -> list[Any]:
    """The suite, from the columns the feature set declares (``{field}_{aggregation}``)."""
    found: list[Any] = [gx.expectations.ExpectTableRowCountToBeBetween(min_value=1)]
    found += [gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in KEY]
    found.append(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=KEY))
    for column in columns:
        if column.endswith("_count") or column.endswith("_std"):
            found.append(gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=0))
        if column.endswith("_mean"):
            field = column.removesuffix("_mean")
            for low, high in ((f"{field}_max", column), (column, f"{field}_min")):
                if low in columns and high in columns:
                    pair = gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB
                    found.append(
                        pair(
                            column_A=low,
                            column_B=high,
                            or_equal=True,
                            ignore_row_if="either_value_is_missing",
                        )
                    )
    return found


def validate(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one JSON line, no bars
    source = context.data_sources.add_pandas(name="headwater")
    batch = (
        source.add_dataframe_asset(name=f"{name}_windows")
        .add_batch_definition_whole_dataframe("offline")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_windows"))
    for expectation in expectations(list(frame.columns)):
        suite.add_expectation(expectation)
    result = batch.validate(suite)
    outcomes = [
        {
            "expectation": r.expectation_config.type,
            "kwargs": {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"},
            "success": bool(r.success),
        }
        for r in result.results
    ]
    return {"success": bool(result.success), "rows": len(frame), "expectations": outcomes}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: great_expectations_check.py HOME FEATURE_SET", file=sys.stderr)
        return 2
    home, name = Path(argv[0]), argv[1]
    frame = load_windows(home, name)
    if frame.empty:
        print(f"no windows rows for feature set {name!r} under {home}/offline", file=sys.stderr)
        return 2
    report = validate(frame, name)
    print(json.dumps(report, default=str))
    return 0 if report["success"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
