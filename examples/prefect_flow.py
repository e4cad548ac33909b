"""A Prefect 3 flow that keeps headwater indexes up to date: discover the sources, ingest each
(mapped, retried with exponential backoff, one writer per home through a concurrency limit keyed
by the home), verify each home, publish a summary.

    python examples/prefect_flow.py /data/docs --home /var/lib/headwater     # one run, here
    # or deploy it: prefect deploy examples/prefect_flow.py:headwater_ingest

headwater is a library and a CLI you call; you keep your Prefect. Tested with prefect 3.9.1
(CI runs it under ``prefect_test_harness``: tests/e2e/test_orchestrators.py).

Why the CLI in a subprocess, not the Python API: the CLI's exit codes and ``--json`` events are
headwater's documented contract for scripts (README, "What a script can rely on"), and a process
per task isolates each run (memory, signals, and the home's writer lock, which dies with its
process). headwater can live in Prefect's environment (``pip install headwater``, as CI does: the
``headwater`` next to this Python is found first) or anywhere else: ``HEADWATER_BIN`` names it.
Every other headwater setting comes from the environment (``HEADWATER_EMBEDDER``, ...) or a
``headwater.toml``, exactly as for the CLI.

The partition key is the home. One home has one writer at a time (headwater's own lock), so each
ingest holds a slot of the global concurrency limit ``headwater-home-<hash of the home>`` (limit 1,
created by the flow): sources mapped into one home take turns in Prefect's queue, also across
overlapping flow runs, while sources in different homes (``home_per_source=True``: a home per
source under ``home``) run at once. Ingests pass ``--no-wait``, so a writer outside Prefect (cron,
``headwater serve``) fails the attempt with exit 4 and the retry comes back later. Two sources
with the same relative file paths share document ids in one home: give them a home each
(README, "Identity"). Usage and configuration errors (exit 2 and 3), and a verify that finds
disagreements (exit 1), are not retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.tasks import exponential_backoff

PERMANENT_EXIT_CODES = frozenset({2, 3})  # usage, configuration: a retry cannot fix them
COUNTS = (
    "documents_seen",
    "documents_added",
    "documents_updated",
    "documents_unchanged",
    "documents_deleted",
    "documents_skipped",
    "documents_failed",
    "chunks_embedded",
    "chunks_deleted",
)


class HeadwaterFailed(RuntimeError):
    """A headwater command failed in a way that may pass (busy home, store down, disk full)."""


class HeadwaterRefused(HeadwaterFailed):
    """A usage or configuration error: retrying the same command cannot succeed."""


def headwater_bin() -> str:
    named = os.environ.get("HEADWATER_BIN")
    if named:
        return named
    beside = Path(sys.executable).with_name("headwater")
    return str(beside) if beside.exists() else shutil.which("headwater") or "headwater"


def headwater(
    *args: str, permanent: frozenset[int] = PERMANENT_EXIT_CODES
) -> subprocess.CompletedProcess[str]:
    command = [headwater_bin(), *args]
    get_run_logger().info("running %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode == 0:
        return done
    msg = f"headwater {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}"
    if done.returncode in permanent:
        raise HeadwaterRefused(msg)
    raise HeadwaterFailed(msg)


def home_limit(home: str) -> str:
    """The concurrency limit of one home (the partition key): its resolved path, hashed."""
    return f"headwater-home-{hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:12]}"


def holding(home: str) -> Any:
    """The home's slot, for the body. The limit must exist (the flow creates it: strict); a lost
    lease renewal does not stop a run, since headwater's own lock still keeps one writer."""
    return concurrency(home_limit(home), occupy=1, strict=True, raise_on_lease_renewal_failure=False)


def retryable(_task: Any, _task_run: Any, state: Any) -> bool:
    return not isinstance(state.data, HeadwaterRefused)


@task
def discover(sources: list[str] | None, sources_root: str | None) -> list[str]:
    """``sources`` when given, else the sub-folders of ``sources_root``."""
    if sources:
        return list(sources)
    root = Path(sources_root or ".")
    if not root.is_dir():
        msg = f"sources_root {root} is not a folder (pass sources or sources_root)"
        raise HeadwaterRefused(msg)
    return sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@task(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_condition_fn=retryable)
def ingest(source: str, home: str) -> dict[str, Any]:
    """One incremental ``ingest docs``, holding its home's slot: the RunCompleted counts."""
    with holding(home):
        done = headwater("ingest", "docs", source, "--home", home, "--json", "--no-wait")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not events or events[-1].get("type") != "RunCompleted":
        msg = f"ingest of {source} printed no RunCompleted event"
        raise HeadwaterFailed(msg)
    return {"source": source, "home": home, **{k: int(events[-1][k]) for k in COUNTS}}


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_condition_fn=retryable)
def verify(home: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Metadata and vector store agree (exit 1 otherwise); the home's counts and fingerprint."""
    with holding(home):
        # Exit 1: metadata and vectors disagree, which waiting will not change (verify --repair will).
        headwater("verify", "--home", home, "--json", permanent=PERMANENT_EXIT_CODES | {1})
    status = json.loads(headwater("status", "--home", home, "--json").stdout)
    totals = {k: sum(r[k] for r in runs) for k in COUNTS}
    keep = ("documents", "chunks", "vectors", "dlq", "fingerprint")
    return {"home": home, "sources": len(runs), **totals, **{k: status[k] for k in keep}}


@flow(name="headwater-ingest")
def headwater_ingest(
    sources: list[str] | None = None,
    sources_root: str | None = None,
    home: str = os.environ.get("HEADWATER_HOME", ".headwater"),
    home_per_source: bool = False,
    retry_backoff_seconds: float = 10,
    summary_file: str | None = None,
) -> list[dict[str, Any]]:
    """Ingest every source, verify every home touched, and return (and optionally write) one
    small summary per home."""
    found = discover(sources, sources_root)
    homes = [str(Path(home) / Path(s.rstrip("/")).name) if home_per_source else home for s in found]
    with get_client(sync_client=True) as client:
        for name in {home_limit(h) for h in homes}:
            client.upsert_global_concurrency_limit_by_name(name, 1)
    backoff = exponential_backoff(backoff_factor=retry_backoff_seconds)
    runs = ingest.with_options(retry_delay_seconds=backoff).map(found, homes).result()
    touched = sorted(set(homes))
    summaries = verify.map(touched, [[r for r in runs if r["home"] == h] for h in touched]).result()
    get_run_logger().info("headwater run: %s", json.dumps(summaries, sort_keys=True))
    if summary_file:
        Path(summary_file).write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    return summaries


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the headwater-ingest flow once.")
    parser.add_argument("sources_root", help="a folder whose sub-folders are the sources")
    parser.add_argument("--home", default=os.environ.get("HEADWATER_HOME", ".headwater"))
    parser.add_argument("--home-per-source", action="store_true")
    args = parser.parse_args()
    headwater_ingest(sources_root=args.sources_root, home=args.home, home_per_source=args.home_per_source)
