"""``headwater jobs`` without a server: submit, list, run until the queue is empty, and the errors
a user meets (an unknown job, a source that does not exist, an illegal transition)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli


def test_jobs_submit_and_run_without_a_server(cli: Cli, corpus: Path, home: Path, tmp_path: Path) -> None:
    h = ["--home", str(home)]
    first = cli("jobs", "submit", str(corpus), *h).stdout.strip()
    missing = cli("jobs", "submit", str(tmp_path / "absent"), *h, "--priority", "9").stdout.strip()
    listed = cli.json_lines("jobs", "list", *h, "--json")
    assert [(j["id"], j["status"]) for j in listed] == [(missing, "queued"), (first, "queued")]

    ran = cli("jobs", "run", *h, check=False)
    assert ran.returncode == 1  # one of the jobs it ran failed
    status = {j["id"]: j for j in cli.json_lines("jobs", "list", *h, "--json")}
    assert status[first]["status"] == "succeeded"
    assert status[first]["progress"]["completed"] == 6
    assert status[missing]["status"] == "failed"
    assert "absent" in status[missing]["reason"]

    clean = tmp_path / "clean"
    cli("ingest", "docs", str(corpus), "--home", str(clean))
    assert cli.status(home)["fingerprint"] == cli.status(clean)["fingerprint"]

    refused = cli("jobs", "resume", first, *h, check=False)
    assert refused.returncode == 1
    assert "only a paused job can be resumed" in refused.stderr
    unknown = cli("jobs", "status", "f" * 32, *h, check=False)
    assert (unknown.returncode, "no job" in unknown.stderr) == (1, True)
    queued = cli("jobs", "submit", str(corpus), *h).stdout.strip()
    assert "cancelled" in cli("jobs", "cancel", queued, *h).stdout
    assert cli("jobs", "run", *h).returncode == 0  # nothing left to run
