"""Signals benchmark: events/s from Parquet to both feature stores, and peak RSS.

    python bench/signals.py --events 1000000 --runs 3          # medians of 3
    python bench/signals.py --events 1000000,10000000 --runs 1
    python bench/signals.py --input climate --runs 3           # JSONL, several fields per event

Data: arrivals ~1,000 ev/s, 1,000 entities (Zipf-skewed), 5% out of order within 2 s, 0.5% very
late (5-120 s), 1% duplicates re-delivered up to ~3 s later; windows 1s/5s/60s, lateness 2 s.
``--input parquet`` (default): one numeric field, ``value``, with its eight default aggregations.
``--input climate``: the same events as JSONL with the payload ``{"temp", "humidity", "unit",
"status"}`` (humidity missing from 1 in 5), feature set temp and humidity x count, sum, mean,
min, max, std + status x last, count_distinct, no points.
Each run is a fresh process (so peak RSS is per run) writing to a fresh home folder.
Prints a table and writes JSON (default bench/results/signals.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def generate(out: Path, events: int, entities: int = 1000, seed: int = 7, part_rows: int = 1_000_000) -> None:
    """Write ``events`` signals in arrival order as Parquet parts (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    weights = 1.0 / np.arange(1, entities + 1) ** 0.6
    weights /= weights.sum()
    clock = 1_700_000_000_000
    for part, start in enumerate(range(0, events, part_rows)):
        n = min(part_rows, events - start)
        arrival = clock + np.cumsum(rng.exponential(1.0, n)).astype(np.int64)
        clock = int(arrival[-1])
        kind = rng.random(n)
        delay = rng.integers(0, 51, n)
        delay = np.where(kind < 0.05, rng.integers(0, 2001, n), delay)
        delay = np.where(kind > 0.995, rng.integers(5000, 120_001, n), delay)
        ent = rng.choice(entities, size=n, p=weights)
        seq = np.arange(start, start + n, dtype=np.int64)
        value = np.sin(seq / 500.0 + ent) * 10 + rng.normal(0, 1, n) + 100
        t = arrival - delay
        dup = np.flatnonzero(rng.random(n) < 0.01)
        later = np.minimum(dup + rng.integers(1, 3000, dup.size), n - 1)
        rank = np.concatenate([np.arange(n) * 2.0, later * 2.0 + 1])
        src = np.concatenate([np.arange(n), dup])[np.argsort(rank, kind="stable")]
        table = pa.table(
            {
                "entity_id": pa.array([f"sensor-{e:04d}" for e in ent[src]]),
                "event_time": pa.array(t[src]),
                "sequence": pa.array(seq[src]),
                "value": pa.array(value[src]),
            }
        )
        pq.write_table(table, out / f"part-{part:04d}.parquet", row_group_size=100_000)


CLIMATE = {
    "temp": ["count", "sum", "mean", "min", "max", "std"],
    "humidity": ["count", "sum", "mean", "min", "max", "std"],
    "status": ["last", "count_distinct"],
}


def climate_jsonl(parquet: Path, out: Path) -> None:
    """The Parquet events as JSONL with a climate payload (deterministic)."""
    import msgspec

    out.mkdir(parents=True, exist_ok=True)
    encode = msgspec.json.Encoder()
    statuses = ["ok", "ok", "ok", "warn", "fail"]
    for part in sorted(parquet.glob("part-*.parquet")):
        table = pq.read_table(part)
        columns = [table[c].to_pylist() for c in ("entity_id", "event_time", "sequence", "value")]
        with (out / f"{part.stem}.jsonl").open("wb") as sink:
            for entity, t, seq, value in zip(*columns, strict=True):
                payload = {"temp": round(value / 5, 3), "unit": "C", "status": statuses[seq % 5]}
                if seq % 5:
                    payload["humidity"] = round(40 + value / 10, 2)
                event = {"entity_id": entity, "event_time": t, "sequence": seq, "payload": payload}
                sink.write(encode.encode(event) + b"\n")


def online_url(home: Path) -> str:
    """``--online-store`` with a fresh ``{key}`` per run (a store outside the home outlives it)."""
    return ARGS.online_store.format(key=home.name.replace("-", "_")) if ARGS.online_store else ""


def offline_url(home: Path) -> str:
    """``--offline-store`` with a fresh ``{key}`` per run, ``{home}`` the run's home folder."""
    if not ARGS.offline_store:
        return ""
    return ARGS.offline_store.format(key=home.name.replace("-", "_"), home=home)


def run_once(data: Path, events: int, compute: str) -> dict[str, float]:
    """One ingest in a child process; returns its wall time, events/s and peak RSS. On Spark the
    session (JVM start-up) is opened first and timed apart; CPU and RSS are the driver's only."""
    home = Path(tempfile.mkdtemp(prefix="hw-bench-"))
    code = (
        "import sys, time, resource, json; from pathlib import Path;"
        "from headwater.pipeline.signals import SignalPipeline, SignalOptions;"
        "from headwater.featuresets import build_feature_set;"
        "from headwater import registry;"
        "from headwater.adapters.parquet import ParquetOfflineStore; import asyncio\n"
        "async def main():\n"
        "    url = sys.argv[6] or 'sqlite:///' + sys.argv[2] + '/features.db'\n"
        "    on = registry.create('online_store', url)\n"
        "    await on.open()\n"
        "    off = registry.create('offline_store', sys.argv[7]) if sys.argv[7]"
        " else ParquetOfflineStore(sys.argv[2] + '/offline')\n"
        "    spec = build_feature_set('bench', windows='1s,5s,1m', lateness='2s',"
        " points=sys.argv[3] == '1', features=json.loads(sys.argv[5]))\n"
        "    kw = dict(inputs=Path(sys.argv[1]), spec=spec, online=on, offline=off,"
        " options=SignalOptions(batch_events=int(sys.argv[4])), clock=lambda: 1_800_000_000_000)\n"
        "    jvm = 0.0\n"
        "    if sys.argv[8] == 'local':\n"
        "        p = SignalPipeline(**kw)\n"
        "    else:\n"
        "        from headwater.adapters.spark import open_session, spark_master\n"
        "        from headwater.pipeline.signal_spark import SparkSignalPipeline\n"
        "        t = time.perf_counter(); open_session(spark_master(sys.argv[8]))\n"
        "        jvm = time.perf_counter() - t\n"
        "        p = SparkSignalPipeline(master=spark_master(sys.argv[8]), **kw)\n"
        "    c = resource.getrusage(resource.RUSAGE_SELF); c0 = c.ru_utime + c.ru_stime\n"
        "    t = time.perf_counter(); r = await p.run_async(); dt = time.perf_counter() - t\n"
        "    c = resource.getrusage(resource.RUSAGE_SELF); cpu = c.ru_utime + c.ru_stime - c0\n"
        "    await on.close()\n"
        "    print(json.dumps({'seconds': dt, 'cpu_seconds': cpu, 'rows': r.feature_rows_written,"
        " 'late': r.late_dropped, 'jvm_seconds': jvm,"
        " 'dups': r.duplicates, 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    features = json.dumps(CLIMATE if ARGS.input == "climate" else None)
    try:
        stores = [online_url(home), offline_url(home)]
        argv = [str(data), str(home), ARGS.points, str(ARGS.batch), features, *stores, compute]
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["events_per_s"] = events / result["seconds"]
    result["cpu_us_per_event"] = result["cpu_seconds"] * 1e6 / events
    result["load_avg_1m"] = os.getloadavg()[0]
    return result


def main() -> None:
    sizes = [int(s) for s in ARGS.events.split(",")]
    cache = Path(ARGS.data)
    results = []
    for size in sizes:
        data = cache / f"signals-{size}"
        if not (data / "_done").exists():
            t = time.perf_counter()
            generate(data, size)
            (data / "_done").write_text("ok")
            print(f"generated {size:,} events in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        if ARGS.input == "climate":
            jsonl = cache / f"climate-{size}"
            if not (jsonl / "_done").exists():
                climate_jsonl(data, jsonl)
                (jsonl / "_done").write_text("ok")
            data = jsonl
        results.extend(
            summary(size, compute, [run_once(data, size, compute) for _ in range(ARGS.runs)])
            for compute in ARGS.compute.split(",")
        )
    header = (
        "events",
        "compute",
        "runs",
        "seconds",
        "JVM s",
        "events/s",
        "CPU us/ev",
        "peak RSS MiB",
        "rows",
    )
    print("{:>12} {:>9} {:>4} {:>8} {:>6} {:>12} {:>9} {:>13} {:>10}".format(*header))
    for r in results:
        print(
            f"{r['events']:>12,} {r['compute']:>9} {len(r['runs']):>4} {r['median_seconds']:>8.2f} "
            f"{r['median_jvm_seconds']:>6.1f} {r['median_events_per_s']:>12,.0f} "
            f"{r['median_cpu_us_per_event']:>9.2f} {r['median_peak_rss_mib']:>13.0f} {r['feature_rows']:>10,}"
        )
    write_results(results)


def summary(size: int, compute: str, runs: list[dict[str, float]]) -> dict[str, object]:
    """Medians of the runs of one size on one engine."""
    return {
        "events": size,
        "compute": compute,
        "median_jvm_seconds": statistics.median(r["jvm_seconds"] for r in runs),
        "runs": runs,
        "median_events_per_s": statistics.median(r["events_per_s"] for r in runs),
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_peak_rss_mib": statistics.median(r["rss_mib"] for r in runs),
        "median_cpu_us_per_event": statistics.median(r["cpu_us_per_event"] for r in runs),
        "feature_rows": runs[0]["rows"],
        "late_dropped": runs[0]["late"],
        "duplicates": runs[0]["dups"],
    }


def write_results(results: list[dict[str, object]]) -> None:
    name = "signals-climate.json" if ARGS.input == "climate" else "signals.json"
    out = Path(ARGS.out) if ARGS.out else ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "points": ARGS.points == "1",
        "input": ARGS.input,
        "batch": ARGS.batch,
        "online_store": ARGS.online_store or "sqlite",
        "offline_store": ARGS.offline_store or "parquet",
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(
        f"wrote {out}; self RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
        file=sys.stderr,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", default="1000000", help="comma-separated sizes, e.g. 1000000,10000000")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--batch", type=int, default=250_000, help="micro-batch size (events; the CLI's default)"
    )
    parser.add_argument("--points", default="1", choices=["0", "1"], help="also compute EWMA and z-score")
    parser.add_argument(
        "--compute",
        default="local",
        help="comma-separated engines, e.g. local,local[2] (Spark: extra [spark] and Java 17+)",
    )
    parser.add_argument("--input", default="parquet", choices=["parquet", "climate"], help="see above")
    parser.add_argument(
        "--online-store",
        help="online store URL, {key} a fresh name per run, e.g. 'redis://127.0.0.1:6379/0?prefix={key}' "
        "(default: SQLite in the home)",
    )
    parser.add_argument(
        "--offline-store",
        help="offline store URL, {key} a fresh name per run, {home} the run's home, e.g. "
        "'delta://{home}/offline' (default: Parquet in the home)",
    )
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "headwater-bench"))
    parser.add_argument("--out", help="default bench/results/signals.json (signals-climate.json for climate)")
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    main()
