"""The offline store on Delta end to end: ``HEADWATER_OFFLINE_STORE=delta:///…`` (and
``delta+s3://…``) makes ``ingest signals`` write, and ``features export`` read, the same rows as a
home's default Parquet store; a re-run, and a re-run in fewer batches, never duplicate a row."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import polars as pl
import pytest

from headwater import registry
from tests.conftest import ROOT, Cli, assert_same_rows
from tests.contract.urls import adapter_url, url_id

pytest.importorskip("deltalake")

SIGNALS = ROOT / "samples" / "signals"
FEATURES = (
    "--feature-set", "sensors", "--late-policy", "hold",
    "--features", "value:mean,max,std,ewma,zscore;rpm:mean,max;status:last,count_distinct",
)  # fmt: skip
URLS = ["delta://{tmp}/delta-offline", "delta+s3://{s3_server.bucket}/e{unique}/offline"]
DATASETS = ("windows", "points", "late")


def stored_rows(url: str) -> dict[str, int]:
    """Every row the store holds, per dataset (not collapsed as an export is)."""
    store = registry.create("offline_store", url)
    return {d: asyncio.run(store.read(d, "sensors")).height for d in DATASETS}


@pytest.mark.parametrize("template", URLS, ids=url_id)
def test_delta_offline_equals_parquet_and_reruns_do_not_duplicate(
    cli: Cli, template: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    delta_url = adapter_url(template, request, tmp_path)
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # s3_server's, if started
    homes = {
        "parquet": (tmp_path / "parquet", {}, str(tmp_path / "parquet" / "offline")),
        "delta": (tmp_path / "delta", {**aws, "HEADWATER_OFFLINE_STORE": delta_url}, delta_url),
    }
    counts: dict[str, list[dict[str, int]]] = {"parquet": [], "delta": []}
    # A run, the same run again (a re-run), then a re-run in fewer, larger batches (prune).
    for batch_events in ("100", "100", "300"):
        for name, (home, env, url) in homes.items():
            cli("ingest", "signals", str(SIGNALS), "--home", str(home), *FEATURES,
                "--batch-events", batch_events, env=env)  # fmt: skip
            counts[name].append(stored_rows(url))
    assert counts["delta"][:2] == counts["parquet"][:2]
    assert counts["delta"][0] == counts["delta"][1] and counts["delta"][0]["late"] > 0
    # After the third run Delta holds what one run in batches of 300 writes. (The Parquet store
    # keeps a part's files for days the new batch of that number no longer covers, and a part
    # the new batch leaves empty: stale ``late`` rows, which an export collapses.)
    fresh = tmp_path / "fresh"
    cli("ingest", "signals", str(SIGNALS), "--home", str(fresh), *FEATURES, "--batch-events", "300")
    assert counts["delta"][2] == stored_rows(str(fresh / "offline"))
    for dataset in DATASETS:
        exported = {}
        for name, (home, env, _) in homes.items():
            out = tmp_path / f"{name}-{dataset}.parquet"
            cli("features", "export", "--home", str(home), "--feature-set", "sensors",
                "--dataset", dataset, "--out", str(out), env=env)  # fmt: skip
            exported[name] = pl.read_parquet(out)
        assert exported["delta"].schema == exported["parquet"].schema, dataset
        assert_same_rows(exported["delta"], exported["parquet"])
    assert not (tmp_path / "delta" / "offline").exists()  # the rows came from Delta
