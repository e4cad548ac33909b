"""Query benchmark (issue #14): ``POST /v1/query`` of a running ``headwater serve``, over real HTTP.

For each embedder it builds (or reuses, under ``--work``) a home of about ``--chunks`` chunks from
the deterministic corpus of ``bench/_corpus.py`` (``headwater ingest docs``: incremental, so a
finished home costs a no-change run), starts ``headwater serve`` on 127.0.0.1 with a token,
warms it up, then sends ``--queries`` distinct questions with k=``--k``: one at a time (keep-alive
client, as a RAG application's worker), then with ``--concurrency`` clients at once, and
sequentially with a ``uri_prefix`` filter. Latency is the client's: request sent to answer read.

    python bench/query.py                                  # MiniLM and hash, ~20k chunks (ingest ~15 min)
    python bench/query.py --embedders hash --chunks 2000   # quick look
    python bench/query.py --embedders minilm --work /tmp/hwq --queries 500 --concurrency 4

Prints a table (p50, p90, p99, max, qps, and the server's own ``took_ms`` median) and writes
everything to ``--out`` (JSON). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _corpus as corpus_mod
from _proc import child_env, headwater_cmd, last_json_line

BENCH = Path(__file__).resolve().parent
CHUNKS_PER_DOC = 8.1  # measured on this corpus with the default chunker (500 docs: 4,054 chunks)
EMBEDDERS = {"minilm": "minilm://", "hash": "hash://"}


def build_home(embedder: str, chunks: int, args: argparse.Namespace, say: Any) -> tuple[Path, int]:
    """The home for this embedder and size, ingested (a no-change run when it already is)."""
    docs = math.ceil(chunks / CHUNKS_PER_DOC)
    corpus = corpus_mod.generate(corpus_mod.CorpusSpec(docs, args.seed), args.work)
    home = args.work / f"home-{embedder}-{docs}"
    env = child_env(EMBEDDERS[embedder])
    if args.no_ingest and home.is_dir():
        say(f"[{embedder}] {home} as it is (--no-ingest)")
        return home, home_chunks(home, env, args.timeout)
    say(f"[{embedder}] ingest {corpus.root} ({docs} docs) into {home} ...")
    start = time.perf_counter()
    out = args.work / f"ingest-{embedder}-{docs}.out"
    with out.open("wb") as stdout:
        done = subprocess.run(
            headwater_cmd("ingest", "docs", str(corpus.root), "--home", str(home), "--json"),
            env=env, stdout=stdout, stderr=subprocess.PIPE, timeout=args.timeout, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"ingest failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    final = last_json_line(out)
    say(f"[{embedder}] ingest {time.perf_counter() - start:.1f} s, embedded {final.get('chunks_embedded')}")
    return home, home_chunks(home, env, args.timeout)


def home_chunks(home: Path, env: dict[str, str], timeout: float) -> int:
    status = subprocess.run(
        headwater_cmd("status", "--home", str(home), "--json"),
        env=env, capture_output=True, text=True, timeout=timeout, check=True,
    )  # fmt: skip
    return int(json.loads(status.stdout)["chunks"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``headwater serve`` in a child process, stopped with SIGTERM."""

    def __init__(self, home: Path, embedder: str, logs: Path) -> None:
        self.token = secrets.token_hex(16)
        self.port = free_port()
        env = {**child_env(EMBEDDERS[embedder]), "HEADWATER_API_TOKEN": self.token}
        self.log = logs.open("wb")
        self.proc = subprocess.Popen(
            headwater_cmd("serve", "--home", str(home), "--host", "127.0.0.1", "--port", str(self.port)),
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def wait_ready(self, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"headwater serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/livez", timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit("headwater serve did not answer /livez")

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def questions(n: int, seed: int) -> list[str]:
    """Distinct questions in the corpus's vocabulary (no answer can be cached)."""
    rng = random.Random(f"query:{seed}")
    words = corpus_mod.WORDS
    return [f"how does {' '.join(rng.choices(words, k=rng.randint(3, 10)))} work? ({i})" for i in range(n)]


def summary(latencies_ms: list[float], took_ms: list[float], wall_s: float) -> dict[str, Any]:
    ordered = sorted(latencies_ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)], 2)

    return {
        "n": len(ordered),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "qps": round(len(ordered) / wall_s, 1),
        "server_p50_ms": round(statistics.median(took_ms), 2),
    }


def sequential(server: Server, texts: list[str], k: int, prefix: str | None = None) -> dict[str, Any]:
    latencies, took = [], []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        start = time.perf_counter()
        for text in texts:
            body: dict[str, Any] = {"text": text, "k": k}
            if prefix:
                body["uri_prefix"] = prefix
            sent = time.perf_counter()
            response = client.post("/v1/query", json=body)
            latencies.append((time.perf_counter() - sent) * 1000)
            response.raise_for_status()
            answer = response.json()
            if len(answer["hits"]) != k or (prefix and not answer["hits"][0]["uri"].startswith(prefix)):
                raise SystemExit(f"unexpected answer: {answer}")
            took.append(answer["took_ms"])
        return summary(latencies, took, time.perf_counter() - start)


async def concurrent(server: Server, texts: list[str], k: int, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    took: list[float] = []
    queue = list(reversed(texts))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers, timeout=60, limits=limits
    ) as client:

        async def worker() -> None:
            while queue:
                text = queue.pop()
                sent = time.perf_counter()
                response = await client.post("/v1/query", json={"text": text, "k": k})
                latencies.append((time.perf_counter() - sent) * 1000)
                response.raise_for_status()
                took.append(response.json()["took_ms"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return summary(latencies, took, time.perf_counter() - start)


def bench_embedder(embedder: str, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    home, chunks = build_home(embedder, args.chunks, args, say)
    server = Server(home, embedder, args.work / f"serve-{embedder}.log")
    result: dict[str, Any] = {"embedder": embedder, "home": str(home), "chunks": chunks, "runs": {}}
    try:
        result["livez_after_s"] = round(server.wait_ready(120), 2)
        start = time.perf_counter()
        for text in questions(args.warmup, args.seed + 1):  # the first waits for the model to load
            httpx.post(f"{server.url}/v1/query", json={"text": text, "k": args.k}, headers=server.headers,
                       timeout=300).raise_for_status()  # fmt: skip
        result["warmup_s"] = round(time.perf_counter() - start, 2)
        texts = questions(args.queries, args.seed)
        say(f"[{embedder}] {chunks} chunks; {args.queries} sequential queries, k={args.k} ...")
        result["runs"]["sequential"] = sequential(server, texts, args.k)
        for clients in args.concurrency:
            say(f"[{embedder}] {args.queries} queries from {clients} concurrent clients ...")
            result["runs"][f"concurrent-{clients}"] = asyncio.run(concurrent(server, texts, args.k, clients))
        if args.prefix:
            say(f"[{embedder}] {args.queries // 2} sequential queries with uri_prefix={args.prefix!r} ...")
            result["runs"]["sequential+prefix"] = sequential(
                server, texts[: args.queries // 2], args.k, args.prefix
            )
        result["server_rss_mb"] = round(server.rss_mb(), 1)
    finally:
        server.stop()
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    cols = ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "qps", "server_p50_ms")
    print(f"\n{'embedder':<8} {'chunks':>7} {'run':<18}" + "".join(f"{c:>14}" for c in cols))
    for res in results:
        for name, run in res["runs"].items():
            print(
                f"{res['embedder']:<8} {res['chunks']:>7} {name:<18}" + "".join(f"{run[c]:>14}" for c in cols)
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedders", default="minilm,hash", help="comma-separated: minilm, hash")
    parser.add_argument("--chunks", type=int, default=20_000, help="about this many chunks in the home")
    parser.add_argument("--queries", type=int, default=500, help="queries per run (distinct texts)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--concurrency", default="4", help="comma-separated client counts ('' for none)")
    parser.add_argument("--prefix", default="area000/", help="uri_prefix of the filtered run ('' for none)")
    parser.add_argument("--warmup", type=int, default=20, help="queries before measuring")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hwbench-query"), help="corpora, homes, logs")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "query.json")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per ingest")
    parser.add_argument(
        "--no-ingest",
        action="store_true",
        help="query an existing home as it is (e.g. an ingest stopped early)",
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    say = lambda line: print(line, flush=True)  # noqa: E731
    results = []
    started = time.time()
    for embedder in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        if embedder not in EMBEDDERS:
            raise SystemExit(f"--embedders: {embedder!r} is not one of {', '.join(EMBEDDERS)}")
        results.append(bench_embedder(embedder, args, say))
        save(args, results, started)
    print_table(results)
    print(f"\nJSON: {args.out}")
    return 0


def save(args: argparse.Namespace, results: list[dict[str, Any]], started: float) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "started_unix": started,
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
