"""Contract of the FeatureStore and OfflineFeatureStore ports, run against every adapter URL: add
its template to ``ONLINE_URLS`` or ``OFFLINE_URLS`` (see tests/contract/urls.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from headwater import registry
from headwater.models import BatchCommit, SignalCheckpoint
from headwater.ports import FeatureStore, OfflineFeatureStore
from tests.contract.urls import adapter_url, url_id

ONLINE_URLS = ["sqlite:///{tmp}/features.db", "redis://127.0.0.1:{redis_server.port}/0?prefix=t{unique}"]
OFFLINE_URLS = [
    "{tmp}/offline",
    "file://{tmp}/offline",
    "delta://{tmp}/offline",
    "delta+s3://{s3_server.bucket}/t{unique}/offline",
]


def row(entity: str, window_ms: int, start: int, revision: int = 0, count: int = 1) -> tuple[Any, ...]:
    features = {"value_count": count, "value_mean": 1.0, "value_std": None, "status_last": "ok"}
    return (entity, "fs", 1, window_ms, start, revision, json.dumps(features))


def commit(
    batch_no: int, rows: list[tuple[Any, ...]], *, checkpoint_due: bool = True, status: str = "running"
) -> BatchCommit:
    checkpoint = SignalCheckpoint(
        scope="s",
        fingerprint="f",
        next_batch=batch_no + 1,
        file_index=0,
        row_offset=10 * (batch_no + 1),
        counters={"events_seen": batch_no},
        state=b"state",
        status=status,
    )
    invalid = [("s", batch_no, 0, f"f:line {batch_no}", "$.value", "bad")]
    return BatchCommit(
        scope="s",
        batch_no=batch_no,
        online_rows=rows,
        online_points=[],
        invalid_rows=invalid,
        checkpoint=checkpoint if checkpoint_due else None,
    )


@pytest.fixture(params=ONLINE_URLS, ids=url_id)
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    store: FeatureStore = registry.create("online_store", adapter_url(request.param, request, tmp_path))
    asyncio.run(store.open())
    yield store
    asyncio.run(store.close())


@pytest.fixture(params=OFFLINE_URLS, ids=url_id)
def offline(request: pytest.FixtureRequest, tmp_path: Path) -> OfflineFeatureStore:
    url = adapter_url(request.param, request, tmp_path)
    store: OfflineFeatureStore = registry.create("offline_store", url)
    return store


def test_online_upserts_by_key_and_reads_latest(online: FeatureStore) -> None:
    assert isinstance(online, FeatureStore)
    asyncio.run(online.commit(commit(0, [row("a", 1000, 0), row("a", 1000, 1000), row("a", 5000, 0)])))
    asyncio.run(online.commit(commit(1, [row("a", 1000, 1000, revision=1, count=7), row("b", 1000, 0)])))
    latest = asyncio.run(online.get_latest("a", "fs"))
    assert [(r["window_ms"], r["window_start_ms"], r["value_count"], r["revision"]) for r in latest] == [
        (1000, 1000, 7, 1),
        (5000, 0, 1, 0),
    ]
    assert asyncio.run(online.get_latest("nobody", "fs")) == []
    assert asyncio.run(online.get_latest("a", "fs", version=2)) == []


def test_online_rows_never_go_back_to_an_older_revision(online: FeatureStore) -> None:
    """A re-run of a backfill recomputes revision 0 of a window a correction or a release had
    revised: the online store keeps the revised row; the same revision replayed still applies."""
    asyncio.run(online.commit(commit(0, [row("a", 1000, 0, revision=2, count=9)])))
    asyncio.run(online.commit(commit(1, [row("a", 1000, 0, revision=0, count=1)])))
    assert [(r["revision"], r["value_count"]) for r in asyncio.run(online.get_latest("a", "fs"))] == [(2, 9)]
    asyncio.run(online.commit(commit(2, [row("a", 1000, 0, revision=2, count=10)])))
    assert [(r["revision"], r["value_count"]) for r in asyncio.run(online.get_latest("a", "fs"))] == [(2, 10)]


def test_online_checkpoint_and_bookkeeping_commit_together(online: FeatureStore) -> None:
    assert asyncio.run(online.load_checkpoint("s")) is None
    asyncio.run(online.commit(commit(0, [row("a", 1000, 0)])))
    asyncio.run(online.commit(commit(0, [row("a", 1000, 0)])))  # a replayed batch is harmless
    asyncio.run(online.commit(commit(1, [row("a", 1000, 1000)], checkpoint_due=False)))  # rows only
    cp = asyncio.run(online.load_checkpoint("s"))
    assert cp is not None
    assert (cp.next_batch, cp.row_offset, cp.state, cp.counters) == (1, 10, b"state", {"events_seen": 0})
    assert asyncio.run(online.get_latest("a", "fs"))[0]["window_start_ms"] == 1000
    pending = asyncio.run(online.undelivered_invalid())
    assert [(p["batch"], p["input_ref"]) for p in pending] == [(0, "f:line 0"), (1, "f:line 1")]
    asyncio.run(online.mark_delivered([("s", 0, 0, 41), ("s", 1, 0, 42)]))
    asyncio.run(online.commit(commit(0, [row("a", 1000, 0)])))  # replay keeps the delivery mark
    assert asyncio.run(online.undelivered_invalid()) == []


def test_online_point_features_patch_the_fields_a_batch_carried(online: FeatureStore) -> None:
    """An entity's latest point keeps each field's last value: a batch whose events lacked
    ``humidity`` leaves the stored humidity EWMA in place."""

    def points(batch_no: int, t: int, features: dict[str, float]) -> BatchCommit:
        point = ("a", "fs", 1, t, batch_no, json.dumps(features))
        return BatchCommit(
            scope="s", batch_no=batch_no, online_rows=[row("a", 1000, 0)], online_points=[point],
            invalid_rows=[], checkpoint=None,
        )  # fmt: skip

    asyncio.run(online.commit(points(0, 10, {"temp": 1.0, "temp_ewma": 1.0, "humidity_ewma": 40.0})))
    asyncio.run(online.commit(points(1, 20, {"temp": 3.0, "temp_ewma": 1.2})))
    point = next(r for r in asyncio.run(online.get_latest("a", "fs")) if r.get("kind") == "point")
    assert (point["event_time_ms"], point["temp_ewma"], point["humidity_ewma"]) == (20, 1.2, 40.0)
    window = next(r for r in asyncio.run(online.get_latest("a", "fs")) if r.get("kind") != "point")
    assert (window["value_std"], window["status_last"]) == (None, "ok")


def test_online_commit_is_atomic(online: FeatureStore) -> None:
    broken = commit(0, [row("a", 1000, 0), ("only", "two")])
    with pytest.raises(Exception):  # noqa: B017 - any driver error; the point is what stays behind
        asyncio.run(online.commit(broken))
    assert asyncio.run(online.load_checkpoint("s")) is None
    assert asyncio.run(online.get_latest("a", "fs")) == []


def frame(starts: list[int], value: float = 1.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "entity_id": ["a"] * len(starts),
            "window_start_ms": starts,
            "value": [value] * len(starts),
        }
    ).with_columns(pl.from_epoch("window_start_ms", time_unit="ms").dt.date().cast(pl.String).alias("date"))


def test_offline_write_replaces_parts_and_partitions_by_date(offline: OfflineFeatureStore) -> None:
    day = 86_400_000
    asyncio.run(offline.write("windows", "fs", "part-s-000000", frame([0, day])))
    asyncio.run(offline.write("windows", "fs", "part-s-000000", frame([0, day], value=2.0)))
    asyncio.run(offline.write("windows", "fs", "part-s-000001", frame([5])))
    rows = asyncio.run(offline.read("windows", "fs"))
    assert rows.height == 3
    assert sorted(rows["date"].unique().to_list()) == ["1970-01-01", "1970-01-02"]
    assert rows.filter(pl.col("_part") == "part-s-000000.parquet")["value"].to_list() == [2.0, 2.0]
    assert asyncio.run(offline.read("windows", "other")).height == 0
    assert asyncio.run(offline.prune("windows", "fs", "s", 0)) == 1
    assert asyncio.run(offline.read("windows", "fs")).height == 2
    root = getattr(offline, "root", None)
    if not isinstance(root, Path):
        return  # a remote store (delta+s3://): no local folders to look at
    assert not list(root.rglob("*.tmp"))
    assert list(root.glob("windows/*fs/date=1970-01-02"))  # a folder per day (Delta: ROOT/windows/fs)


def test_offline_write_replaces_the_whole_part_whatever_days_it_had(offline: OfflineFeatureStore) -> None:
    """A replay of a batch cut differently (another --batch-events, a resumed run) may cover
    fewer days than the part it replaces, or none: what the part held before is gone either way."""
    day = 86_400_000
    asyncio.run(offline.write("late", "fs", "part-s-000003", frame([0, day, 2 * day])))
    asyncio.run(offline.write("late", "fs", "part-s-000004", frame([day])))
    asyncio.run(offline.write("late", "fs", "part-s-000003", frame([day], value=7.0)))
    rows = asyncio.run(offline.read("late", "fs"))
    mine = rows.filter(pl.col("_part") == "part-s-000003.parquet")
    assert mine["value"].to_list() == [7.0] and mine["date"].to_list() == ["1970-01-02"]
    asyncio.run(offline.write("late", "fs", "part-s-000003", frame([]).clear()))
    rows = asyncio.run(offline.read("late", "fs"))
    assert rows["_part"].to_list() == ["part-s-000004.parquet"]
