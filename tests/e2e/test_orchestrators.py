"""The scheduling examples run under the real orchestrators, each in its own virtual environment
(Airflow and Prefect pin their own pydantic, SQLAlchemy and FastAPI: scripts/test makes
``.venv-airflow`` and ``.venv-prefect`` from constraints/, with headwater installed into each, and
exports AIRFLOW_PYTHON and PREFECT_PYTHON). The DAG runs with ``airflow dags test`` on a temporary
SQLite Airflow home, the flow under ``prefect_test_harness``; each index they build must have the
fingerprint of clean ``headwater ingest docs`` runs, and an ingest that fails once (a store
outage, exit 5) must be retried."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli, missing

pytestmark = pytest.mark.timeout(600)
SOURCES = ("guides", "reference")  # the sub-folders of samples/docs: two sources

PREFECT_SCRIPT = r"""
import json, runpy, sys
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

module = runpy.run_path(sys.argv[1])
out = []
with prefect_test_harness(server_startup_timeout=180):
    for parameters in json.loads(sys.argv[2]):
        state = module["headwater_ingest"](**parameters, return_state=True)
        out.append({"state": state.type.value, "summaries": state.result(raise_on_failure=False)})
    with get_client(sync_client=True) as client:
        runs = {str(r.id): r for r in client.read_flow_runs()}
        tasks = client.read_task_runs()
        limits = sorted(g.name for g in client.read_global_concurrency_limits(limit=100))
for done, flow_run in zip(out, sorted(runs.values(), key=lambda r: r.start_time)):
    done["attempts"] = sorted(
        (t.name.rsplit("-", 1)[0], t.run_count) for t in tasks if t.flow_run_id == flow_run.id
    )
print(json.dumps({"runs": out, "limits": limits}, default=str))
"""


def orchestrator_python(variable: str, tool: str) -> Path:
    found = os.environ.get(variable)
    if found and Path(found).exists():
        return Path(found)
    venv = f".venv-{tool.lower()}"
    missing(f"{variable} names no interpreter with {tool} (scripts/test makes one: {venv})", f"{tool} test")


def flaky_headwater(python: Path, folder: Path) -> Path:
    """A HEADWATER_BIN whose first ``ingest`` fails as a store outage would (exit 5), then the real
    one: the headwater installed beside the orchestrator, else this checkout's."""
    real = python.with_name("headwater")
    run = f'exec "{real}" "$@"'
    if not real.exists():
        run = f'PYTHONPATH="{ROOT / "src"}" exec "{sys.executable}" -m headwater.cli "$@"'
    marker = folder / "failed-once"
    script = folder / "headwater"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = ingest ] && [ ! -e "{marker}" ]; then\n'
        f'  : > "{marker}"; echo "simulated outage" >&2; exit 5\n'
        "fi\n"
        f"{run}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def clean_fingerprint(cli: Cli, home: Path, *sources: Path) -> str:
    for source in sources:
        cli("ingest", "docs", str(source), "--home", str(home))
    return str(cli.status(home)["fingerprint"])


def base_env(tmp_path: Path, headwater: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "HEADWATER_EMBEDDER": "hash://",
        "HEADWATER_WORKERS": "2",
        "HEADWATER_BIN": str(headwater),
    }


def test_airflow_dag_builds_a_clean_index_and_retries(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    python = orchestrator_python("AIRFLOW_PYTHON", "Airflow")
    airflow_home = tmp_path / "airflow"
    (airflow_home / "dags").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "airflow_dag.py", airflow_home / "dags")
    env = {
        **base_env(tmp_path, flaky_headwater(python, tmp_path)),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(airflow_home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "INGEST_RETRY_DELAY_SECONDS": "1",
    }
    airflow = str(python.with_name("airflow"))
    migrated = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    home, metrics = tmp_path / "home", tmp_path / "metrics" / "headwater.prom"
    conf = {"sources_root": str(corpus), "home": str(home), "metrics_file": str(metrics)}
    tested = subprocess.run(
        [airflow, "dags", "test", "headwater_ingest", "--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,  # ~30 s here; a retry that waited Airflow's 300 s default would not fit
    )
    log = tested.stdout + tested.stderr
    assert tested.returncode == 0, log[-4000:]
    assert "state=success" in log, log[-4000:]
    assert (tmp_path / "failed-once").exists()  # the first ingest failed, and the run still succeeded
    assert "new_state=up_for_retry" in log

    clean = clean_fingerprint(cli, tmp_path / "clean", *(corpus / name for name in SOURCES))
    assert cli.status(home)["fingerprint"] == clean
    assert cli("verify", "--home", str(home)).returncode == 0
    published = metrics.read_text(encoding="utf-8")
    assert 'headwater_last_run_documents{outcome="added"} 6\n' in published
    assert "headwater_index_documents 6\n" in published
    assert "headwater_index_dlq_entries 0\n" in published


def test_prefect_flow_builds_clean_indexes_and_retries(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    python = orchestrator_python("PREFECT_PYTHON", "Prefect")
    env = {
        **base_env(tmp_path, flaky_headwater(python, tmp_path)),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    per_source, shared = tmp_path / "homes", tmp_path / "shared"
    parameters = [
        # One home per source: the two ingests run at once; the first attempt of one fails.
        {"sources_root": str(corpus), "home": str(per_source), "home_per_source": True},
        # One home for both: the home's concurrency limit makes them take turns.
        {"sources": [str(corpus / "guides"), str(corpus / "reference")], "home": str(shared)},
        # A source that does not exist: a configuration error (exit 3), which no retry can fix.
        {"sources": [str(tmp_path / "absent")], "home": str(tmp_path / "absent-home")},
    ]
    for p in parameters:
        p["retry_backoff_seconds"] = 1
    flow = ROOT / "examples" / "prefect_flow.py"
    done = subprocess.run(
        [str(python), "-c", PREFECT_SCRIPT, str(flow), json.dumps(parameters)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    first, second, third = report["runs"]
    states = (first["state"], second["state"], third["state"])
    assert states == ("COMPLETED", "COMPLETED", "FAILED"), done.stderr[-4000:]

    clean = {name: clean_fingerprint(cli, tmp_path / "clean" / name, corpus / name) for name in SOURCES}
    got = {Path(s["home"]).name: s["fingerprint"] for s in first["summaries"]}
    assert got == clean
    for name, fingerprint in clean.items():
        assert cli.status(per_source / name)["fingerprint"] == fingerprint
    ingests = [n for task, n in first["attempts"] if task == "ingest"]
    assert sorted(ingests) == [1, 2]  # the outage was retried, once, on one source

    both = clean_fingerprint(cli, tmp_path / "clean" / "both", *(corpus / name for name in SOURCES))
    [summary] = second["summaries"]
    assert (summary["fingerprint"], summary["documents_added"], summary["sources"]) == (both, 6, 2)
    assert cli.status(shared)["fingerprint"] == both
    # Turns, not collisions: no ingest into the shared home found it busy (exit 4) and retried.
    assert [n for task, n in second["attempts"] if task == "ingest"] == [1, 1]
    assert [n for task, n in third["attempts"] if task == "ingest"] == [1]  # not retried
    assert len(report["limits"]) == 4  # one per home: two per-source homes, the shared one, the absent one


def crontab(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """examples/cron.md's crontab: its variables (with ``env`` put over them) and its commands by
    the headwater subcommand they run, schedule removed."""
    text = (ROOT / "examples" / "cron.md").read_text(encoding="utf-8")
    block = text.split("```crontab\n", 1)[1].split("```", 1)[0]
    variables: dict[str, str] = {}
    commands: dict[str, str] = {}
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            variables[name] = value
            continue
        command = line.split(maxsplit=5)[5]
        commands[command.split(" headwater ", 1)[1].split()[0]] = command
    assert set(commands) == {"ingest", "jobs", "verify"}
    return {**variables, **env}, commands


def run_cron(command: str, env: dict[str, str], cwd: Path) -> str:
    """One crontab command as cron runs it (SHELL, the crontab's variables); what cron would mail."""
    done = subprocess.run(
        [env["SHELL"], "-c", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cron_lines_run_and_never_overlap(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    if shutil.which("flock") is None:
        missing("flock not found (util-linux)", "cron example test")
    bin_dir, logs, home = tmp_path / "bin", tmp_path / "logs", tmp_path / "home"
    bin_dir.mkdir()
    logs.mkdir()
    shim = bin_dir / "headwater"  # this checkout's headwater, as the crontab's PATH would find it
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT / "src"}" exec "{sys.executable}" -m headwater.cli "$@"\n')
    shim.chmod(0o755)
    overrides = {"HEADWATER_HOME": str(home), "DOCS": str(corpus), "LOGS": str(logs), "HOME": str(tmp_path)}
    env, commands = crontab({**overrides, "HEADWATER_EMBEDDER": "hash://"})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"

    assert run_cron(commands["ingest"], env, tmp_path) == ""
    last = json.loads((logs / "ingest.jsonl").read_text().splitlines()[-1])
    assert (last["type"], last["documents_added"]) == ("RunCompleted", 6)
    assert cli.status(home)["fingerprint"] == clean_fingerprint(cli, tmp_path / "clean", corpus)

    # The previous cron run still holds the cron lock: this one is skipped at once (75).
    with (tmp_path / "home.cron.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert "exited 75" in run_cron(commands["ingest"], env, tmp_path)
    # Another writer (not cron) holds headwater's own lock: --no-wait exits 4 at once.
    with (home / "locks" / "documents.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert "exited 4" in run_cron(commands["ingest"], env, tmp_path)

    (corpus / "guides" / "new.md").write_text("# New\n\nA page the queued job indexes.\n")
    job = cli("jobs", "submit", str(corpus), "--home", str(home)).stdout.strip()
    assert run_cron(commands["jobs"], env, tmp_path) == ""
    assert cli.json_lines("jobs", "status", job, "--home", str(home), "--json")[0]["status"] == "succeeded"
    assert run_cron(commands["verify"], env, tmp_path) == ""
    assert cli.status(home)["documents"] == 7
