"""Document benchmark: headwater (and optionally LangChain's ``index()``) on the same corpus.

Workloads (each its own process, so import time counts; state persists between them, as in cron):
  W1 cold ingest · W2 re-run, nothing changed · W3 re-run after inserting one paragraph in the middle
  of 1 % of the files · W4 re-run after deleting 1 % of the files.
After each workload headwater's own checks run (untimed): ``verify`` exits 0, W2 embeds nothing,
W3 updates exactly the edited files, W4 removes the deleted files from ``export``.

    python bench/docs.py --sizes 200 --runs 1                      # quick look
    python bench/docs.py --sizes 1000,3000 --runs 3 --compare langchain
    python bench/docs.py --corpus /usr/share/doc/python3.11/html/_sources /usr/share/doc/nodejs/api \
        --runs 5 --compare langchain                               # real docs (bench/README.md)
    python bench/docs.py --sizes 100000 --runs 1
    python bench/docs.py --embedder minilm --minilm-docs 500       # raw model.encode vs end to end

Writes every run's raw numbers and the medians to ``--out`` (JSON) and prints a table.
See bench/README.md for what each column means and how to read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _corpus as corpus_mod
from _proc import Measured, child_env, headwater_cmd, last_json_line, run_measured

BENCH = Path(__file__).resolve().parent
WORKLOADS = ("W1", "W2", "W3", "W4")
RUN_COUNTS = (
    "documents_seen",
    "documents_added",
    "documents_updated",
    "documents_unchanged",
    "documents_deleted",
    "chunks_embedded",
    "chunks_deleted",
)


@dataclass
class Record:
    """One workload of one repetition: the raw numbers that go to the JSON file."""

    tool: str
    size: int
    run: int
    workload: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    maxrss_mb: float = 0.0
    docs_per_s: float | None = None
    chunks: int | None = None
    chunks_per_s: float | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    load1: float = 0.0
    ok: bool = True
    error: str | None = None
    corpus: str = ""

    def absorb(self, measured: Measured) -> None:
        self.wall_s, self.cpu_s = measured.wall_s, measured.cpu_s
        self.peak_rss_mb, self.maxrss_mb = measured.peak_rss_mb, measured.maxrss_mb
        if measured.timed_out:
            self.fail(f"timed out after {measured.wall_s:.0f} s")
        elif measured.returncode != 0:
            self.fail(f"exit code {measured.returncode}")

    def fail(self, why: str) -> None:
        self.ok = False
        self.error = f"{self.error}; {why}" if self.error else why

    def rates(self) -> None:
        """docs/s = files the run looked at per wall second; chunks/s only for W1 (chunks in the index)."""
        seen = self.counts.get("documents_seen")
        if seen and self.wall_s:
            self.docs_per_s = seen / self.wall_s
        if self.workload == "W1" and self.chunks and self.wall_s:
            self.chunks_per_s = self.chunks / self.wall_s


# ---------------------------------------------------------------- running tools


def quiet(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Untimed helper commands (verify, status, export): return code and output."""
    import subprocess

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


class Headwater:
    """Runs one workload through ``headwater ingest docs --json`` and checks the result with its own CLI."""

    name = "headwater"

    def __init__(
        self,
        embedder: str,
        timeout: float,
        vector_store: str | None = None,
        metadata_store: str | None = None,
        compute: str = "local",
    ) -> None:
        self.base_env = {**child_env(embedder), "HEADWATER_COMPUTE": compute}
        self.timeout = timeout
        self.vector_store = vector_store
        self.metadata_store = metadata_store
        self.env = self.base_env
        self.token = os.urandom(3).hex()  # a fresh table per sequence on a shared database

    def use_home(self, home: Path) -> None:
        """``--vector-store`` for this home: ``{home}`` is its path, ``{key}`` a name unique to the
        sequence that is also a valid table name (a store outside the home is not removed with it)."""
        key = re.sub(r"[^a-z0-9]+", "_", f"hw_{home.name}_{self.token}".lower())
        self.env = dict(self.base_env)
        for template, name in ((self.vector_store, "VECTOR"), (self.metadata_store, "METADATA")):
            if template is not None:
                self.env[f"HEADWATER_{name}_STORE"] = template.format(home=home.resolve(), key=key)

    def run(self, rec: Record, corpus: corpus_mod.Corpus, home: Path, logs: Path) -> None:
        stem = logs / f"{rec.workload}"
        measured = run_measured(
            headwater_cmd("ingest", "docs", str(corpus.root), "--home", str(home), "--json"),
            env=self.env,
            stdout=stem.with_suffix(".out"),
            stderr=stem.with_suffix(".err"),
            timeout=self.timeout,
        )
        rec.absorb(measured)
        final = last_json_line(stem.with_suffix(".out"))
        if final.get("type") != "RunCompleted":
            rec.fail("no RunCompleted line at the end of --json output")
        rec.counts = {
            k: final.get(k)
            for k in (
                *RUN_COUNTS,
                "documents_skipped",
                "documents_failed",
                "chunks_reused",
                "embed_calls",
                "elapsed_seconds",
            )
        }

    def check(self, rec: Record, corpus: corpus_mod.Corpus, home: Path, edits: dict[str, list[str]]) -> None:
        rc, text = quiet(headwater_cmd("verify", "--home", str(home)), self.env, self.timeout)
        rec.checks["verify_exit"] = rc
        if rc != 0:
            rec.fail(f"verify exited {rc}: {text.strip()[-300:]}")
        rc, text = quiet(headwater_cmd("status", "--home", str(home), "--json"), self.env, self.timeout)
        status = json.loads(text.strip().splitlines()[-1]) if rc == 0 and text.strip() else {}
        rec.checks["status"] = {k: status.get(k) for k in ("documents", "chunks", "vectors", "dlq")}
        rec.chunks = status.get("chunks")
        expect_checks(rec, len(corpus.files), edits)
        if rec.workload == "W4":
            self.check_export(rec, home, edits)

    def check_export(self, rec: Record, home: Path, edits: dict[str, list[str]]) -> None:
        """Deleted files have no rows left; every edited file that still exists shows its new paragraph."""
        import subprocess

        gone, edited = set(edits["W4"]), set(edits["W3"]) - set(edits["W4"])
        leftovers, with_edit, rows = 0, set(), 0
        cmd = headwater_cmd("export", "--format", "jsonl", "--home", str(home))
        with subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                row = json.loads(line)
                rows += 1
                uri = row.get("uri", "")
                leftovers += uri in gone
                if uri in edited and "Edited:" in row.get("text", ""):
                    with_edit.add(uri)
        rec.checks.update(
            export_rows=rows,
            rows_of_deleted=leftovers,
            edited_seen=len(with_edit),
            edited_expected=len(edited),
        )
        if leftovers:
            rec.fail(f"{leftovers} exported rows belong to deleted files")
        if len(with_edit) != len(edited):
            rec.fail(f"only {len(with_edit)}/{len(edited)} edited files show their new paragraph")


def expect_checks(rec: Record, n_files: int, edits: dict[str, list[str]]) -> None:
    """Per-workload expectations on the RunCompleted counts (the incremental invariants)."""
    c = rec.counts
    if rec.workload == "W1" and c.get("documents_added") != n_files:
        rec.fail(f"W1 added {c.get('documents_added')} of {n_files} documents")
    if rec.workload == "W2" and c.get("chunks_embedded") != 0:
        rec.fail(f"W2 (nothing changed) embedded {c.get('chunks_embedded')} chunks")
    if rec.workload == "W3" and c.get("documents_updated") != len(edits["W3"]):
        rec.fail(f"W3 updated {c.get('documents_updated')} documents, {len(edits['W3'])} were edited")
    if rec.workload == "W4" and c.get("documents_deleted") != len(edits["W4"]):
        rec.fail(f"W4 deleted {c.get('documents_deleted')} documents, {len(edits['W4'])} were removed")


class LangChain:
    """Runs one workload through LangChain ``index()`` in its own process (bench/_langchain_worker.py):
    ``SQLRecordManager`` + a vector store on disk (``store``: LanceDB by default), the same embedding."""

    name = "langchain"

    def __init__(self, timeout: float, store: str = "lancedb", embed: str = "hash", batch: int = 100) -> None:
        self.env = child_env("hash://")
        self.timeout = timeout
        self.store = store
        self.embed = embed
        self.batch = batch
        self.worker = [sys.executable, str(BENCH / "_langchain_worker.py")]
        self.logs = Path()

    def run(self, rec: Record, corpus: corpus_mod.Corpus, home: Path, logs: Path) -> None:
        self.logs = logs  # check() finds deleted.txt / edited.txt here
        stem = logs / f"{rec.workload}"
        cmd = [*self.worker, "index", str(corpus.root), str(home), "--store", self.store]
        cmd += ["--embedder", self.embed, "--batch-size", str(self.batch)]
        measured = run_measured(
            cmd,
            env=self.env,
            stdout=stem.with_suffix(".out"),
            stderr=stem.with_suffix(".err"),
            timeout=self.timeout,
        )
        rec.absorb(measured)
        result = last_json_line(stem.with_suffix(".out"))
        if not result:
            rec.fail("no JSON result line from the LangChain worker")
        rec.counts = {
            "documents_seen": result.get("documents_seen"),
            "chunks_embedded": result.get("chunks_embedded"),
            "num_added": result.get("num_added"),
            "num_updated": result.get("num_updated"),
            "num_skipped": result.get("num_skipped"),
            "num_deleted": result.get("num_deleted"),
            "embed_calls": result.get("embed_calls"),
            "phases": result.get("phases"),
        }

    def check(self, rec: Record, corpus: corpus_mod.Corpus, home: Path, edits: dict[str, list[str]]) -> None:
        """Untimed ``inspect`` of the store. Informative only: LangChain's known incremental-mode gaps
        (W2 re-embeds chunks of documents that straddle a batch; deleted files are never cleaned up
        by ``cleanup="incremental"``) are reported, not failed."""
        logs = self.logs
        cmd = [*self.worker, "inspect", str(home), "--store", self.store]
        if rec.workload == "W4":
            cmd += ["--deleted", str(logs / "deleted.txt"), "--edited", str(logs / "edited.txt")]
        rc, text = quiet(cmd, self.env, self.timeout)
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("{")]
        found = json.loads(lines[-1]) if rc == 0 and lines else {}
        if not found:
            rec.fail(f"inspect exited {rc}: {text.strip()[-300:]}")
        rec.checks.update(found)
        rec.chunks = found.get("vectors")
        if rec.workload == "W2":
            rec.checks["w2_reembedded"] = rec.counts.get("chunks_embedded")


# ---------------------------------------------------------------- one sequence W1..W4


def run_sequence(
    tool: Headwater | LangChain, corpus: corpus_mod.Corpus, run: int, work: Path, log: Callable[[str], None]
) -> list[Record]:
    """W1→W4 on a fresh home, then restore the corpus so the next sequence sees the same bytes."""
    home = work / f"home-{tool.name}-{corpus.spec.size}-r{run}"
    logs = work / "logs" / f"{tool.name}-{corpus.spec.size}-r{run}"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    edits: dict[str, list[str]] = {"W3": [], "W4": []}
    records: list[Record] = []
    try:
        for wl in WORKLOADS:
            if wl == "W3":
                edits["W3"] = corpus_mod.modify(corpus)
            if wl == "W4":
                edits["W4"] = corpus_mod.delete(corpus)
                (logs / "deleted.txt").write_text("\n".join(edits["W4"]) + "\n")
                still = sorted(set(edits["W3"]) - set(edits["W4"]))
                (logs / "edited.txt").write_text("\n".join(still) + "\n")
            rec = Record(
                tool.name, corpus.spec.size, run, wl, load1=os.getloadavg()[0], corpus=corpus.spec.name
            )
            if isinstance(tool, Headwater):
                tool.use_home(home)
            tool.run(rec, corpus, home, logs)
            if rec.ok:
                tool.check(rec, corpus, home, edits)
            rec.rates()
            records.append(rec)
            log(describe(rec))
            if not rec.ok and wl == "W1":
                break
    finally:
        corpus_mod.restore(corpus)
        shutil.rmtree(home, ignore_errors=True)
    return records


def describe(rec: Record) -> str:
    emb = rec.counts.get("chunks_embedded")
    status = "ok" if rec.ok else f"FAILED: {rec.error}"
    return (
        f"  {rec.tool:9} n={rec.size:<6} run {rec.run} {rec.workload}: {rec.wall_s:7.2f} s wall, "
        f"{rec.cpu_s:6.2f} s CPU, {rec.peak_rss_mb:6.0f} MB peak, embedded {emb}, chunks {rec.chunks}, "
        f"load {rec.load1:.1f} [{status}]"
    )


# ---------------------------------------------------------------- medians, table, ratios


def median_of(records: list[Record], attr: str) -> float | None:
    values = [getattr(r, attr) for r in records if r.ok and getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def medians(records: list[Record]) -> dict[str, dict[str, Any]]:
    """Median per (tool, size, workload) over the repetitions that succeeded."""
    groups: dict[tuple[str, int, str], list[Record]] = {}
    for rec in records:
        groups.setdefault((rec.tool, rec.size, rec.workload), []).append(rec)
    out: dict[str, dict[str, Any]] = {}
    for (tool, size, wl), recs in sorted(groups.items()):
        emb = [
            r.counts.get("chunks_embedded")
            for r in recs
            if r.ok and r.counts.get("chunks_embedded") is not None
        ]
        out[f"{tool}/{size}/{wl}"] = {
            "tool": tool,
            "size": size,
            "workload": wl,
            "n": sum(r.ok for r in recs),
            "failed": sum(not r.ok for r in recs),
            **{
                a: median_of(recs, a)
                for a in ("wall_s", "cpu_s", "docs_per_s", "chunks_per_s", "peak_rss_mb", "chunks")
            },
            "chunks_embedded": statistics.median(emb) if emb else None,
        }
    return out


def ratios(med: dict[str, dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Per size: throughput, no-change speedup, memory growth and the ratios against LangChain."""

    def get(tool: str, size: int, wl: str, key: str) -> float | None:
        value = med.get(f"{tool}/{size}/{wl}", {}).get(key)
        return float(value) if value is not None else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, Any] = {}
    for size in sizes:
        w1, w2 = get("headwater", size, "W1", "wall_s"), get("headwater", size, "W2", "wall_s")
        out[str(size)] = {
            "headwater_w1_chunks_per_s": get("headwater", size, "W1", "chunks_per_s"),
            "headwater_w2_speedup_vs_w1": div(w1, w2),
            "hw_over_lc_w1_chunks_per_s": div(
                get("headwater", size, "W1", "chunks_per_s"), get("langchain", size, "W1", "chunks_per_s")
            ),
            "hw_over_lc_w1_docs_per_s": div(
                get("headwater", size, "W1", "docs_per_s"), get("langchain", size, "W1", "docs_per_s")
            ),
            "lc_over_hw_w2_time": div(get("langchain", size, "W2", "wall_s"), w2),
            **{
                f"lc_over_hw_{key}_{wl}": div(
                    get("langchain", size, wl, attr), get("headwater", size, wl, attr)
                )
                for key, attr in (("wall", "wall_s"), ("cpu", "cpu_s"))
                for wl in WORKLOADS
            },
        }
    largest = max(sizes)
    peak = [get("headwater", largest, wl, "peak_rss_mb") for wl in WORKLOADS]
    peak10 = [get("headwater", 10_000, wl, "peak_rss_mb") for wl in WORKLOADS]
    top = max((p for p in peak if p is not None), default=None)
    top10 = max((p for p in peak10 if p is not None), default=None)
    out["peak_rss_mb_largest"] = {"size": largest, "mb": top}
    out["peak_rss_mb_10k"] = top10
    out["peak_rss_largest_over_10k"] = div(top, top10) if largest != 10_000 else None
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def print_table(med: dict[str, dict[str, Any]], rat: dict[str, Any]) -> None:
    """Medians side by side (rich if present, plain otherwise), then the ratios."""
    headers = [
        "tool",
        "docs",
        "wl",
        "n",
        "wall s",
        "CPU s",
        "docs/s",
        "chunks/s",
        "chunks",
        "embedded",
        "peak RSS MB",
    ]
    rows = [
        [
            m["tool"],
            fmt(m["size"]),
            m["workload"],
            f"{m['n']}" + (f" ({m['failed']} failed)" if m["failed"] else ""),
            fmt(m["wall_s"], 2),
            fmt(m["cpu_s"], 2),
            fmt(m["docs_per_s"], 0),
            fmt(m["chunks_per_s"], 0),
            fmt(m["chunks"]),
            fmt(m["chunks_embedded"]),
            fmt(m["peak_rss_mb"], 0),
        ]
        for m in sorted(med.values(), key=lambda m: (m["size"], m["workload"], m["tool"]))
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Medians")
        for h in headers:
            table.add_column(h, justify="left" if h in ("tool", "wl") else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=160).print(table)
    except ImportError:
        print(" | ".join(headers))
        for row in rows:
            print(" | ".join(row))
    print_comparison(med)
    print("\nRatios:")
    for key, value in rat.items():
        if isinstance(value, dict):
            print(f"  {key}: " + ", ".join(f"{k}={fmt(v, 2)}" for k, v in value.items()))
        else:
            print(f"  {key}: {fmt(value, 2)}")


def print_comparison(med: dict[str, dict[str, Any]]) -> None:
    """LangChain against headwater per workload: wall and CPU medians and their ratios (if compared)."""
    sizes = sorted({m["size"] for m in med.values() if m["tool"] == "langchain"})
    for size in sizes:
        print(f"\nLangChain / headwater, {size:,} documents (medians; ratio = LangChain / headwater):")
        print(
            "  wl | headwater wall s | LangChain wall s | wall ratio | headwater CPU s | LangChain CPU s "
            "| CPU ratio | chunks hw / lc | embedded hw / lc"
        )
        for wl in WORKLOADS:
            hw, lc = med.get(f"headwater/{size}/{wl}", {}), med.get(f"langchain/{size}/{wl}", {})
            cells = [wl]
            for attr in ("wall_s", "cpu_s"):
                a, b = hw.get(attr), lc.get(attr)
                cells += [fmt(a, 2), fmt(b, 2), f"{b / a:.1f}x" if a and b else "-"]
            cells.append(f"{fmt(hw.get('chunks'))} / {fmt(lc.get('chunks'))}")
            cells.append(f"{fmt(hw.get('chunks_embedded'))} / {fmt(lc.get('chunks_embedded'))}")
            print("  " + " | ".join(cells))


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated corpus sizes (documents)")
    parser.add_argument(
        "--corpus",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="real documents instead of --sizes: the .md/.markdown/.txt/.rst/.pdf files of these folders, "
        "copied under --work (W3/W4 edit the copy)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of W1..W4 per size (medians)")
    parser.add_argument("--compare", choices=["langchain"], help="also run LangChain index() side by side")
    parser.add_argument(
        "--lc-store",
        choices=["lancedb", "community-lancedb", "memory"],
        default="lancedb",
        help="LangChain's vector store: langchain-lancedb (default), langchain_community's LanceDB, "
        "or InMemoryVectorStore dumped to JSON (the old comparison)",
    )
    parser.add_argument(
        "--lc-batch", type=int, default=100, help="LangChain index()'s batch_size (default 100, its default)"
    )
    parser.add_argument(
        "--embed",
        choices=["hash", "minilm"],
        default="hash",
        help="the embedding both sides use in W1-W4: hash:// (default) or MiniLM (slow: ~30 chunks/s)",
    )
    parser.add_argument(
        "--compare-max-size",
        type=int,
        default=10_000,
        help="skip the comparison above this size (LangChain needs ~20 min at 100k)",
    )
    parser.add_argument(
        "--pdf-share", type=float, default=0.0, help="share of small PDFs (reportlab), e.g. 0.05"
    )
    parser.add_argument(
        "--vector-store",
        help="headwater's vector store as a URL template: {home} the home's path, {key} a fresh name "
        "per sequence, e.g. 'faiss://{home}/faiss' or 'pgvector://USER@HOST:PORT/DB?table={key}' "
        "(default: LanceDB in the home)",
    )
    parser.add_argument(
        "--metadata-store",
        help="headwater's metadata store as a URL template like --vector-store, e.g. "
        "'postgresql://USER@HOST:PORT/DB?schema={key}' (default: SQLite in the home)",
    )
    parser.add_argument(
        "--compute",
        default="local",
        help="where headwater computes: local (default) or Spark, e.g. local[2] (needs shared stores: "
        "--metadata-store postgresql://… --vector-store pgvector://…; JVM start-up counts in W1-W4)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hwbench"), help="corpora, homes and logs")
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON results (default bench/results/docs.json, docs-real.json with --corpus)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per workload before it is killed"
    )
    parser.add_argument(
        "--embedder",
        choices=["hash", "minilm"],
        default="hash",
        help="hash: the W1-W4 benchmark; minilm: raw model.encode vs end-to-end chunks/s",
    )
    parser.add_argument("--minilm-docs", type=int, default=500, help="corpus size for --embedder minilm")
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only print the table and ratios of earlier results files (merged), run nothing",
    )
    return parser.parse_args(argv)


def summarize(paths: list[Path]) -> int:
    """Re-read results (e.g. an interrupted run plus a later --sizes 100000 run) and print medians."""
    records = [Record(**row) for path in paths for row in json.loads(path.read_text())["runs"]]
    sizes = sorted({r.size for r in records})
    med = medians(records)
    print_table(med, ratios(med, sizes))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)
    if args.out is None:
        args.out = BENCH / "results" / ("docs-real.json" if args.corpus else "docs.json")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.embedder == "minilm":
        from _minilm import run_minilm

        return run_minilm(args)
    say = lambda line: print(line, flush=True)  # noqa: E731
    records: list[Record] = []
    corpora: dict[int, dict[str, Any]] = {}
    started = time.time()
    makers: list[Callable[[], corpus_mod.Corpus]]
    if args.corpus:
        makers = [lambda: corpus_mod.copy_folders(args.corpus, args.work, args.seed)]
    else:
        makers = [
            lambda size=int(s): corpus_mod.generate(
                corpus_mod.CorpusSpec(size, args.seed, args.pdf_share), args.work
            )
            for s in args.sizes.split(",")
            if s.strip()
        ]
    sizes: list[int] = []
    for make in makers:
        start = time.perf_counter()
        corpus = make()
        size = corpus.spec.size
        sizes.append(size)
        corpora[size] = {
            "name": corpus.spec.name,
            "root": str(corpus.root),
            "files": len(corpus.files),
            "bytes": corpus_mod.corpus_bytes(corpus),
            "sources": json.loads(corpus.manifest.read_text()).get("sources"),
        }
        say(
            f"corpus {corpus.root}: {len(corpus.files)} files, {corpora[size]['bytes'] / 1e6:.1f} MB "
            f"(ready in {time.perf_counter() - start:.1f} s)"
        )
        hw_embedder = "minilm://" if args.embed == "minilm" else "hash://"
        tools: list[Headwater | LangChain] = [
            Headwater(hw_embedder, args.timeout, args.vector_store, args.metadata_store, args.compute)
        ]
        if args.compare == "langchain" and size <= args.compare_max_size:
            tools.append(LangChain(args.timeout, args.lc_store, args.embed, args.lc_batch))
        for run in range(args.runs):
            for tool in tools if run % 2 == 0 else tools[::-1]:  # alternate who goes first
                records.extend(run_sequence(tool, corpus, run, args.work, say))
            save(args, records, corpora, started)
    med = medians(records)
    rat = ratios(med, sizes)
    save(args, records, corpora, started, med, rat)
    print_table(med, rat)
    print(f"\nJSON: {args.out}")
    return 0 if all(r.ok for r in records if r.tool == "headwater") else 1


def save(
    args: argparse.Namespace,
    records: list[Record],
    corpora: dict[int, Any],
    started: float,
    med: dict[str, Any] | None = None,
    rat: dict[str, Any] | None = None,
) -> None:
    """Write after every sequence, so a long benchmark that is interrupted still leaves its numbers."""
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
        "corpora": corpora,
        "medians": med if med is not None else medians(records),
        "ratios": rat,
        "runs": [asdict(r) for r in records],
    }
    args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
