"""The Delta offline store beyond the contract: a replayed part is one copy, prune by predicate,
other readers (polars) see the same rows, a kill -9 mid-write leaves the previous version, and
S3 errors are translated (ConfigError for a bad URL, StoreUnavailable for a dead endpoint)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from tests.contract.urls import adapter_url, url_id
from tests.servers import free_port

from headwater import registry
from headwater.adapters.delta import DeltaOfflineStore
from headwater.errors import ConfigError, StoreUnavailable

pytest.importorskip("deltalake")

URLS = ["delta://{tmp}/offline", "delta+s3://{s3_server.bucket}/u{unique}/offline"]
DAY = 86_400_000


@pytest.fixture(params=URLS, ids=url_id)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DeltaOfflineStore:
    created = registry.create("offline_store", adapter_url(request.param, request, tmp_path))
    assert isinstance(created, DeltaOfflineStore)
    return created


def rows(starts: list[int], value: float = 1.0, entity: str = "a") -> pl.DataFrame:
    """Rows as a signal batch hands them over: ``date`` as days since the epoch (Int32)."""
    frame = pl.DataFrame({"entity_id": [entity] * len(starts), "window_start_ms": starts})
    return frame.with_columns(
        pl.lit(value).alias("value"), (pl.col("window_start_ms") // DAY).cast(pl.Int32).alias("date")
    )


def test_a_replayed_part_is_one_copy(store: DeltaOfflineStore) -> None:
    for value in (1.0, 2.0, 3.0):  # a batch replayed after a crash, then a re-run
        asyncio.run(store.write("windows", "fs", "part-s-000000", rows([0, 1000, DAY], value)))
    asyncio.run(store.write("windows", "fs", "part-s-000001", rows([2000])))
    read = asyncio.run(store.read("windows", "fs"))
    assert read.columns == ["entity_id", "window_start_ms", "value", "date", "_part"]
    assert read.select("window_start_ms", "value", "date", "_part").rows() == [
        (0, 3.0, "1970-01-01", "part-s-000000.parquet"),
        (1000, 3.0, "1970-01-01", "part-s-000000.parquet"),
        (2000, 1.0, "1970-01-01", "part-s-000001.parquet"),
        (DAY, 3.0, "1970-01-02", "part-s-000000.parquet"),
    ]
    asyncio.run(store.write("windows", "fs", "part-s-000001", rows([0]).clear()))  # now empty: replaced
    assert asyncio.run(store.read("windows", "fs"))["_part"].unique().to_list() == ["part-s-000000.parquet"]


def test_prune_drops_the_scopes_parts_beyond_the_last_batch(store: DeltaOfflineStore) -> None:
    for batch in range(4):
        asyncio.run(store.write("windows", "fs", f"part-s-{batch:06d}", rows([batch * 1000, DAY + batch])))
    asyncio.run(store.write("windows", "fs", "part-other-000009", rows([5])))
    asyncio.run(store.write("windows", "fs", "release-1", rows([6])))
    assert asyncio.run(store.prune("windows", "fs", "s", 1)) == 4  # two parts, two days each
    assert asyncio.run(store.prune("windows", "fs", "s", 1)) == 0  # idempotent
    assert asyncio.run(store.prune("windows", "nothing", "s", 1)) == 0
    parts = asyncio.run(store.read("windows", "fs"))["_part"].unique().sort().to_list()
    assert parts == [
        "part-other-000009.parquet", "part-s-000000.parquet", "part-s-000001.parquet", "release-1.parquet",
    ]  # fmt: skip


def test_polars_reads_the_same_rows(store: DeltaOfflineStore) -> None:
    asyncio.run(store.write("points", "fs", "part-s-000000", rows([0, DAY])))
    asyncio.run(store.write("points", "fs", "part-s-000000", rows([0, DAY], 2.0)))
    ours = asyncio.run(store.read("points", "fs"))
    uri = store._uri("points", "fs")
    theirs = pl.read_delta(uri, storage_options=store._options).select(ours.columns)
    assert theirs.sort("window_start_ms").equals(ours.sort("window_start_ms"))


def test_columns_come_and_go_between_batches(store: DeltaOfflineStore) -> None:
    """A batch with a new column, one without an old one, and a column of nulls only: read as
    the Parquet store's relaxed concatenation reads them."""
    asyncio.run(store.write("late", "fs", "part-s-000000", rows([0]).with_columns(pl.lit(None).alias("x"))))
    asyncio.run(store.write("late", "fs", "part-s-000001", rows([1]).with_columns(pl.lit("q").alias("x"))))
    asyncio.run(store.write("late", "fs", "part-s-000002", rows([2]).drop("value")))
    asyncio.run(store.write("late", "fs", "part-s-000003", rows([3]).with_columns(pl.lit(None).alias("x"))))
    read = asyncio.run(store.read("late", "fs")).sort("window_start_ms")
    assert read.schema["x"] == pl.String
    assert read.select("value", "x").rows() == [(1.0, None), (1.0, "q"), (None, None), (1.0, None)]


def test_optimize_compacts_and_keeps_the_rows(tmp_path: Path) -> None:
    store = DeltaOfflineStore(f"delta://{tmp_path}/offline")
    for batch in range(5):
        asyncio.run(store.write("windows", "fs", f"part-s-{batch:06d}", rows([batch])))
    before = asyncio.run(store.read("windows", "fs"))
    metrics = asyncio.run(store.optimize("windows", "fs"))
    assert metrics["numFilesRemoved"] == 5 and metrics["numFilesAdded"] == 1
    assert asyncio.run(store.read("windows", "fs")).equals(before)
    asyncio.run(store.write("windows", "fs", "part-s-000002", rows([2], 9.0)))  # into a compacted file
    after = asyncio.run(store.read("windows", "fs"))
    assert after.height == 5 and after.filter(pl.col("value") == 9.0)["window_start_ms"].to_list() == [2]
    store.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import polars as pl
    from headwater.adapters.delta import DeltaOfflineStore
    store = DeltaOfflineStore(sys.argv[1])
    n = 300_000
    for value in range(1_000_000):
        frame = pl.DataFrame({"entity_id": ["e"] * n, "window_start_ms": range(n)})
        frame = frame.with_columns(pl.lit(float(value)).alias("value"), pl.lit(0, pl.Int32).alias("date"))
        asyncio.run(store.write("windows", "fs", "part-s-000000", frame))
        print(value, flush=True)
    """
)


def test_a_kill_mid_write_leaves_the_previous_version(tmp_path: Path) -> None:
    """A writer killed by SIGKILL at some point of a replace: the table reads one whole version
    of the part, the last committed one (the commit is one log entry, created atomically)."""
    url = f"delta://{tmp_path}/offline"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout is not None
    committed = [int(child.stdout.readline()) for _ in range(2)]
    time.sleep(0.15)  # into the next write
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    committed += [int(line) for line in child.stdout.read().split()]
    read = asyncio.run(DeltaOfflineStore(url).read("windows", "fs"))
    assert read.height == 300_000
    values = read["value"].unique().to_list()
    assert len(values) == 1 and values[0] in (committed[-1], committed[-1] + 1)
    store = DeltaOfflineStore(url)  # and it takes writes again
    asyncio.run(store.write("windows", "fs", "part-s-000000", rows([0], 7.0)))
    assert asyncio.run(store.read("windows", "fs"))["value"].to_list() == [7.0]


def test_an_unreachable_endpoint_is_store_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-to-be-shown")
    store = DeltaOfflineStore("delta+s3://nowhere/offline")
    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(store.write("windows", "fs", "part-s-000000", rows([0])))
    message = str(caught.value)
    assert message.startswith("offline store delta+s3://nowhere/offline: ")
    assert "not-to-be-shown" not in message and "AKIDTEST" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    ["delta://relative/path", "delta://", "delta:///", "delta+s3:///prefix", "delta+s3://b/p?x=1",
     "delta+s3://key:secret@bucket/p", "delta+s3://bucket:9000/p"],
)  # fmt: skip
def test_a_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"delta:///ABSOLUTE/PATH or delta\+s3://BUCKET/PREFIX") as caught:
        registry.create("offline_store", url)
    assert "secret" not in str(caught.value)
