"""RedisFeatureStore beyond the contract: the same answers as the SQLite store, large batches,
prefixes, the NOSCRIPT fallback and errors that never show a password."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from tests.servers import ServerProcess

from headwater.adapters.redis_features import RedisFeatureStore
from headwater.adapters.sqlite_features import SQLiteFeatureStore
from headwater.errors import ConfigError, StoreUnavailable
from headwater.models import BatchCommit, signal_checkpoint


def url(server: ServerProcess, prefix: str) -> str:
    return f"{server.url}?prefix={prefix}"


@pytest.fixture
async def store(redis_server: ServerProcess, unique: str) -> AsyncIterator[RedisFeatureStore]:
    s = RedisFeatureStore(url(redis_server, f"u{unique}"))
    await s.open()
    yield s
    await s.close()


def row(
    entity: str, window_ms: int, start: int, revision: int = 0, v: float = 1.0, version: int = 1
) -> tuple[Any, ...]:
    features = json.dumps({"value_mean": v, "value_max": 2.0, "value_std": None, "status_last": "ok"})
    return (entity, "fs", version, window_ms, start, revision, features)


def point(entity: str, t: int, seq: int, version: int = 1, **features: Any) -> tuple[Any, ...]:
    return (entity, "fs", version, t, seq, json.dumps(features))


def batch(
    n: int, rows: list[tuple[Any, ...]], points: list[tuple[Any, ...]] = (), *, invalid: int = 0
) -> BatchCommit:  # type: ignore[assignment]
    cp = signal_checkpoint("s", "f", next_batch=n + 1, state=bytes([0, 255, n]), counters={"b": n, "a": 1},
                           position=(n, 10 * n))  # fmt: skip
    bad = [("s", n, i, f"x:line {i}", "$.value", "not a number") for i in range(invalid)]
    return BatchCommit(scope="s", batch_no=n, online_rows=rows, online_points=list(points), invalid_rows=bad,
                       checkpoint=cp if n % 2 == 0 else None)  # fmt: skip


SEQUENCE = [
    batch(0, [row("a", 1000, 0), row("a", 1000, 1000), row("a", 5000, 0), row("b", 1000, 0)],
          [point("a", 10, 0, temp=1.0, temp_ewma=1.0, humidity_ewma=40.0)], invalid=2),
    batch(1, [row("a", 1000, 1000, revision=2, v=9.5), row("a", 1000, 0, revision=1, v=3.0)],
          [point("a", 20, 1, temp_ewma=1.25, pressure=1013.0), point("b", 5, 0, temp=0.1)]),
    batch(0, [row("a", 1000, 0), row("a", 1000, 1000), row("a", 5000, 0), row("b", 1000, 0)],
          [point("a", 10, 0, temp=1.0, temp_ewma=1.0, humidity_ewma=40.0)], invalid=2),  # replayed
    batch(2, [row("a", 1000, 1000, revision=0, v=0.5), row("a", 5000, 5000, v=7.0),
              row("a", 1000, 2000, version=2)],
          [point("a", 30, 2, temp=2.0), point("a", 1, 0, version=2, temp=5.0)], invalid=1),  # older revision
    batch(3, [row("a", 1000, 1000, revision=2, v=9.75)], [point("b", 6, 1, temp=None, humidity_ewma=1e-300)]),
]  # fmt: skip


async def test_reads_back_what_the_sqlite_store_does(store: RedisFeatureStore, tmp_path: Path) -> None:
    """Same commits, including a replayed batch, a correction and a recomputed older revision:
    the same rows, in the same order with the same keys (``features get --json`` prints them)."""
    sqlite = SQLiteFeatureStore(f"sqlite:///{tmp_path}/features.db")
    await sqlite.open()
    try:
        for commit in SEQUENCE:
            await sqlite.commit(commit)
            await store.commit(commit)
        for entity in ("a", "b", "nobody"):
            for version in (None, 1, 2, 3):
                expected = await sqlite.get_latest(entity, "fs", version)
                got = await store.get_latest(entity, "fs", version)
                assert json.dumps(got) == json.dumps(expected), (entity, version)
        assert [r.get("value_mean") for r in await store.get_latest("a", "fs", 1)] == [9.75, 7.0, None]
        assert await store.load_checkpoint("s") == await sqlite.load_checkpoint("s")
        assert await store.load_checkpoint("other") is None
        assert await store.undelivered_invalid() == await sqlite.undelivered_invalid()
        keys = [("s", 0, 1, 7), ("s", 2, 0, 8), ("s", 9, 9, 9)]
        await store.mark_delivered(keys)
        await sqlite.mark_delivered(keys)
        await store.commit(SEQUENCE[0])
        await sqlite.commit(SEQUENCE[0])
        assert await store.undelivered_invalid() == await sqlite.undelivered_invalid() != []
    finally:
        await sqlite.close()


async def test_a_100k_row_commit(store: RedisFeatureStore) -> None:
    rows = [row(f"e{i // 10}", 1000 * (1 + i % 10), 60_000, v=i + 0.5) for i in range(100_000)]
    points = [point(f"e{i}", 60_000, i, temp=float(i), temp_ewma=i / 3) for i in range(10_000)]
    commit = BatchCommit(scope="s", batch_no=0, online_rows=rows, online_points=points, invalid_rows=[],
                         checkpoint=signal_checkpoint("s", "f", next_batch=1))  # fmt: skip
    started = time.perf_counter()
    await store.commit(commit)
    took = time.perf_counter() - started
    print(f"\n100k-row commit (+10k points): {took:.3f} s")
    latest = await store.get_latest("e9999", "fs")
    assert [r.get("value_mean") for r in latest] == [99_990.5 + i for i in range(10)] + [None]
    assert latest[-1]["temp_ewma"] == 9999 / 3
    started = time.perf_counter()
    await store.commit(commit)  # replayed: every row compared, none changes
    print(f"the same commit replayed: {time.perf_counter() - started:.3f} s")
    assert await store.get_latest("e9999", "fs") == latest


async def test_two_prefixes_do_not_see_each_other(redis_server: ServerProcess, unique: str) -> None:
    one, two = (
        RedisFeatureStore(url(redis_server, f"a{unique}")),
        RedisFeatureStore(url(redis_server, f"b{unique}")),
    )
    await one.open()
    await two.open()
    try:
        await one.commit(SEQUENCE[0])
        assert await one.get_latest("a", "fs") != []
        assert await one.load_checkpoint("s") is not None
        assert len(await one.undelivered_invalid()) == 2
        assert await two.get_latest("a", "fs") == []
        assert await two.load_checkpoint("s") is None
        assert await two.undelivered_invalid() == []
    finally:
        await one.close()
        await two.close()


async def test_a_flushed_script_cache_is_refilled(
    store: RedisFeatureStore, redis_server: ServerProcess
) -> None:
    """After a server restart or SCRIPT FLUSH, EVALSHA answers NOSCRIPT: the script is sent again."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.script_flush()
        await store.commit(SEQUENCE[0])
        assert (await client.script_exists(*(await _shas())))[0] == 1
    finally:
        await client.aclose()
    assert len(await store.get_latest("a", "fs")) == 3


async def _shas() -> list[str]:
    from headwater.adapters import redis_features

    return [redis_features._COMMIT_SCRIPT.sha]


async def test_store_is_usable_again_after_close(store: RedisFeatureStore) -> None:
    await store.commit(SEQUENCE[0])
    await store.close()
    await store.open()
    assert (await store.load_checkpoint("s")) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_down_server_is_store_unavailable_without_the_password() -> None:
    store = RedisFeatureStore(f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0?prefix=x")
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


async def test_a_server_gone_during_a_call_is_store_unavailable(tmp_path: Path) -> None:
    from tests.conftest import missing
    from tests.servers import RedisServer, find_binary

    binary = find_binary("redis-server")
    if binary is None:
        missing("redis-server not found", "Redis tests")
    server = RedisServer(binary, tmp_path)
    server.start()
    store = RedisFeatureStore(server.url)
    try:
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
        server.start()
        await store.open()
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            await store.commit(SEQUENCE[0])
        assert server.url in str(caught.value)
    finally:
        await store.close()
        server.stop()


@pytest.mark.parametrize(
    "bad",
    ["redis://127.0.0.1/0", "redis://:6379/0", "redis://127.0.0.1:6379/zero", "http://127.0.0.1:6379/0",
     "redis://127.0.0.1:6379/0?prefix=a:b", "redis://127.0.0.1:99999/0"],
)  # fmt: skip
def test_a_malformed_url_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"expected redis://\[:password@\]HOST:PORT/DB"):
        RedisFeatureStore(bad)
