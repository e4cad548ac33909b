"""An Airflow 3 DAG (TaskFlow API) that keeps a headwater index up to date:
discover → ingest (one mapped task per source) → verify → publish metrics.

Copy this file into your DAGs folder. headwater is a library and a CLI you call; you keep your
Airflow. Tested with apache-airflow 3.3.2 (CI runs it with ``airflow dags test`` on a temporary
SQLite Airflow home: tests/e2e/test_orchestrators.py).

Why the CLI in a subprocess, not the Python API: the CLI's exit codes and its ``--json`` events are
headwater's documented contract for scripts (README, "What a script can rely on"), and a process
per task isolates each run: a PDF that exhausts memory, Airflow's SIGTERM on ``execution_timeout``
(headwater stops within a second and exits 143, keeping nothing half-written), and the home's
writer lock, which dies with its process. headwater can live in Airflow's own environment
(``pip install headwater``, as CI does: the ``headwater`` next to the worker's Python is found
first) or anywhere else: ``HEADWATER_BIN`` names the executable. Nothing from headwater is
imported here, so parsing the DAG stays cheap.

Configuration: the DAG's Params (``airflow dags trigger headwater_ingest --conf '{...}'``, or edit
the defaults below): ``sources_root`` (each sub-folder is one source), or ``sources`` (a list of
folders or URLs, which wins when not empty), ``home`` (default: the worker's ``HEADWATER_HOME``)
and ``metrics_file`` (a Prometheus textfile for node_exporter's textfile collector; empty: none).
Every other headwater setting comes from the worker's environment (``HEADWATER_EMBEDDER``,
``HEADWATER_VECTOR_STORE``, ...) or a ``headwater.toml``, exactly as for the CLI.

One home has one writer at a time, so the mapped ingests of one run take turns
(``max_active_tis_per_dagrun=1``) and runs never overlap (``max_active_runs=1``). They pass
``--no-wait``: a home held by someone else (a cron job, ``headwater serve``) fails the attempt at
once with exit 4 instead of holding a worker slot, and the retry comes back later, with
exponential backoff. Sources are ingested into one home, each scoped to its own folder; two
sources with the same relative file paths would share document ids, so give those separate
homes (README, "Identity"). Usage and configuration errors (exit 2 and 3), and a verify that finds
disagreements (exit 1), fail without retrying: trying again cannot fix them.

Only small dicts go through XCom: each ingest's ``RunCompleted`` counts, never the documents.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

log = logging.getLogger(__name__)

# headwater's exit codes (README): 2 a usage error, 3 a configuration error. Retrying cannot fix
# those; every other failure (1 a run error, 4 the home is busy, 5 a store or the embedder is
# down, 6 the disk is full, 143 stopped) may pass, so it is retried with backoff.
PERMANENT_EXIT_CODES = frozenset({2, 3})
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
# The first retry waits INGEST_RETRY_DELAY_SECONDS (at parse time; 300 by default), each next one
# twice as long, up to max_retry_delay. Set retry_delay here rather than through Airflow's
# [core] default_task_retry_delay: with 3.3.2 a task that leaves retry_delay at that default
# waited 300 s in our tests whatever the setting said. And Airflow 3.3 takes a multiplier for
# retry_exponential_backoff: True would mean 1.0, a constant delay.
RETRIES = {
    "retries": 4,
    "retry_delay": timedelta(seconds=float(os.environ.get("INGEST_RETRY_DELAY_SECONDS", "300"))),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}


def headwater_bin() -> str:
    """HEADWATER_BIN, else the ``headwater`` beside this Python (headwater installed in Airflow's
    environment), else the one on PATH."""
    named = os.environ.get("HEADWATER_BIN")
    if named:
        return named
    beside = Path(sys.executable).with_name("headwater")
    return str(beside) if beside.exists() else shutil.which("headwater") or "headwater"


def headwater(
    *args: str, permanent: frozenset[int] = PERMANENT_EXIT_CODES
) -> subprocess.CompletedProcess[str]:
    """Run one headwater command; raise what tells Airflow whether a retry can help."""
    command = [headwater_bin(), *args]
    log.info("running %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.stderr:
        log.info("headwater stderr:\n%s", done.stderr[-4000:])
    if done.returncode == 0:
        return done
    msg = f"headwater {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}"
    if done.returncode in permanent:
        raise AirflowFailException(msg)
    raise AirflowException(msg)


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        msg = "headwater printed no JSON"
        raise AirflowException(msg)
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def write_textfile(path: Path, summary: dict[str, Any]) -> None:
    """Prometheus text format, replaced atomically (node_exporter never reads half a file)."""
    lines = [
        "# HELP headwater_last_run_documents Documents of the last orchestrated run, by outcome.",
        "# TYPE headwater_last_run_documents gauge",
    ]
    for key in COUNTS:
        if key.startswith("documents_"):
            outcome = key.removeprefix("documents_")
            lines.append(f'headwater_last_run_documents{{outcome="{outcome}"}} {summary[key]}')
    for name, value, what in (
        ("headwater_last_run_chunks_embedded", summary["chunks_embedded"], "Chunks embedded, last run."),
        ("headwater_index_documents", summary["documents"], "Documents in the index."),
        ("headwater_index_chunks", summary["chunks"], "Chunks in the index."),
        ("headwater_index_dlq_entries", summary["dlq"], "Open dead-letter entries."),
        ("headwater_last_success_timestamp_seconds", summary["finished_at"], "End of the last clean run."),
    ):
        lines += [f"# HELP {name} {what}", f"# TYPE {name} gauge", f"{name} {value}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)


@dag(
    dag_id="headwater_ingest",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=RETRIES,
    tags=["headwater"],
    params={
        "sources_root": Param("", type="string"),
        "sources": Param([], type="array", items={"type": "string"}),
        "home": Param(os.environ.get("HEADWATER_HOME", ".headwater"), type="string"),
        "metrics_file": Param("", type="string"),
    },
)
def headwater_ingest() -> None:
    @task
    def discover() -> list[str]:
        """The sources: ``sources`` when given, else the sub-folders of ``sources_root``."""
        params = get_current_context()["params"]
        if params["sources"]:
            return [str(s) for s in params["sources"]]
        root = Path(params["sources_root"])
        if not root.is_dir():
            msg = f"sources_root {root} is not a folder (set the sources_root or sources param)"
            raise AirflowFailException(msg)
        found = sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        log.info("discovered %d sources under %s", len(found), root)
        return found

    @task(max_active_tis_per_dagrun=1, execution_timeout=timedelta(hours=2))
    def ingest(source: str) -> dict[str, Any]:
        """One incremental ``ingest docs`` of one source: its RunCompleted counts (small, for XCom)."""
        home = get_current_context()["params"]["home"]
        done = headwater("ingest", "docs", source, "--home", home, "--json", "--no-wait")
        event = last_json(done.stdout)
        if event.get("type") != "RunCompleted":
            msg = f"ingest of {source} ended with {event.get('type')}, not RunCompleted"
            raise AirflowException(msg)
        return {"source": source, **{k: int(event[k]) for k in COUNTS}}

    @task(execution_timeout=timedelta(hours=1))
    def verify(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Metadata and vector store agree (exit 1 otherwise); the index's counts and fingerprint."""
        home = get_current_context()["params"]["home"]
        # Exit 1: metadata and vectors disagree, which waiting will not change (verify --repair will).
        headwater("verify", "--home", home, "--json", permanent=PERMANENT_EXIT_CODES | {1})
        status = json.loads(headwater("status", "--home", home, "--json").stdout)
        runs = list(runs[:])  # a lazy XCom sequence: one read of all the mapped results
        totals = {k: sum(run[k] for run in runs) for k in COUNTS}
        keep = ("documents", "chunks", "vectors", "dlq", "fingerprint")
        return {"sources": len(runs), **totals, **{k: status[k] for k in keep}}

    @task
    def publish_metrics(summary: dict[str, Any]) -> dict[str, Any]:
        summary = {**summary, "finished_at": round(time.time(), 3)}
        log.info("headwater run: %s", json.dumps(summary, sort_keys=True))
        target = get_current_context()["params"]["metrics_file"]
        if target:
            write_textfile(Path(target), summary)
        return summary

    publish_metrics(verify(ingest.expand(source=discover())))


headwater_ingest()
