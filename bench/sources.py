"""Source benchmark: the same generated corpus indexed from a folder and from an S3 bucket.

Per run: W1 cold ingest (list, read, embed, write), then W2 a re-run with nothing changed, which
for a bucket must cost the listing alone (no object read): objects/s of W2 is the figure to watch.
The S3 server is moto's (``moto[server]``, in memory, started here on 127.0.0.1), so its numbers
are a loopback server's, not AWS's: what they show is the per-object cost on our side.

    python bench/sources.py --size 10000 --runs 3
    python bench/sources.py --size 1000 --runs 1            # quick look

Writes every run's raw numbers and the medians to ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _corpus as corpus_mod
from _proc import child_env, headwater_cmd, last_json_line, run_measured

BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_s3(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (work / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"moto's S3 server did not start (see {work / 'moto.log'})")


def upload(corpus: corpus_mod.Corpus, endpoint: str, bucket: str) -> float:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    started = time.perf_counter()
    names = corpus.files
    for start in range(0, len(names), 2000):
        batch = names[start : start + 2000]
        fs.pipe({f"{bucket}/docs/{rel}": (corpus.root / rel).read_bytes() for rel in batch})
    return time.perf_counter() - started


def ingest(url: str, home: Path, env: dict[str, str], work: Path, tag: str) -> dict[str, Any]:
    out, err = work / f"{tag}.out", work / f"{tag}.err"
    measured = run_measured(
        headwater_cmd("ingest", "docs", url, "--home", str(home), "--json"),
        env=env, stdout=out, stderr=err, timeout=3600,
    )  # fmt: skip
    if measured.returncode != 0:
        raise SystemExit(f"{tag} exited {measured.returncode}:\n{err.read_text()[-2000:]}")
    done = last_json_line(out)
    return {
        "wall_s": round(measured.wall_s, 3),
        "cpu_s": round(measured.cpu_s, 3),
        "peak_rss_mb": round(measured.peak_rss_mb, 1),
        "seen": done.get("documents_seen"),
        "added": done.get("documents_added"),
        "unchanged": done.get("documents_unchanged"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10_000, help="documents in the corpus")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (medians)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hwbench-sources"))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "sources.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = corpus_mod.generate(corpus_mod.CorpusSpec(size=args.size), args.work)
    proc, endpoint = start_s3(args.work)
    records: list[dict[str, Any]] = []
    try:
        aws = {
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip
        os.environ.update(aws)  # the upload here, and the runs
        env = {**child_env("hash://"), **aws}
        for run in range(1, args.runs + 1):
            bucket = f"bench-{os.getpid()}-{run}"
            upload_s = upload(corpus, endpoint, bucket)
            for source, url in (("folder", str(corpus.root)), ("s3", f"s3://{bucket}/docs")):
                home = args.work / f"home-{source}-{run}"
                shutil.rmtree(home, ignore_errors=True)
                for workload in ("W1", "W2"):
                    result = ingest(url, home, env, args.work, f"{source}-{workload}-{run}")
                    expected = "added" if workload == "W1" else "unchanged"
                    if result[expected] != args.size:
                        raise SystemExit(f"{source} {workload}: {result}, expected {expected}={args.size}")
                    records.append({"source": source, "workload": workload, "run": run, **result})
                    print(f"run {run} {source:6} {workload}: {result}", flush=True)
                shutil.rmtree(home, ignore_errors=True)
            records.append({"source": "s3", "workload": "upload", "run": run, "wall_s": round(upload_s, 3)})
    finally:
        proc.terminate()
        proc.wait(10)
    medians: dict[str, dict[str, float]] = {}
    for source in ("folder", "s3"):
        for workload in ("W1", "W2"):
            rows = [r for r in records if r["source"] == source and r["workload"] == workload]
            wall = statistics.median(r["wall_s"] for r in rows)
            medians[f"{source} {workload}"] = {
                "wall_s": wall,
                "objects_per_s": round(args.size / wall),
                "cpu_s": statistics.median(r["cpu_s"] for r in rows),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rows),
            }
    print(f"\n{args.size} documents, medians of {args.runs} ({platform.node()}, {os.cpu_count()} cores)")
    print(f"{'':12} {'wall s':>8} {'objects/s':>10} {'cpu s':>7} {'peak MB':>8}")
    for name, m in medians.items():
        print(
            f"{name:12} {m['wall_s']:8.2f} {m['objects_per_s']:10,} {m['cpu_s']:7.2f} {m['peak_rss_mb']:8.0f}"
        )
    ratio = medians["s3 W2"]["wall_s"] / medians["folder W2"]["wall_s"]
    print(f"no-change re-run, bucket / folder: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"size": args.size, "runs": args.runs, "medians": medians, "records": records}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
