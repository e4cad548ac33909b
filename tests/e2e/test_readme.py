"""The README's HTTP examples run as written against a served instance (its job-submit ``curl``
once answered 422 for want of a Content-Type, and nothing noticed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES, Cli
from tests.reliability.test_server_crash import TOKEN, Server

CHANGES_STATE = re.compile(r":(pause|resume|cancel)\b")


def readme_block(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("```\n", start)].splitlines()


def run_curl(line: str, port: int, job_id: str) -> tuple[int, str]:
    """One README curl line as written (but the port and the job id), with each HTTP status."""
    command = line.split("  #", maxsplit=1)[0].replace("localhost:8080", f"127.0.0.1:{port}")
    command = command.replace("/ID", f"/{job_id}")
    command = command.replace("curl ", "curl -sS --max-time 60 -w '\\n%{http_code}\\n' ")
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "T": TOKEN},
    )  # fmt: skip
    assert result.returncode == 0, (line, result.stderr)
    return result.returncode, result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_operating_section_curl_examples_answer_as_documented(tmp_path: Path) -> None:
    shutil.copytree(SAMPLES / "docs", tmp_path / "notes")
    server = Server(tmp_path / ".hw", tmp_path / "server.log")
    server.env["HEADWATER_EMBEDDER"] = "hash://"
    server.start()
    try:
        lines = [line for line in readme_block("## Operating it") if line.startswith("curl ")]
        assert lines, "the section has curl examples"
        job_id = "ID"
        for line in lines:
            _, out = run_curl(line, server.port, job_id)
            statuses = [int(s) for s in re.findall(r"^(\d{3})$", out, flags=re.M)]
            allowed = {200, 201, 202} | ({409} if CHANGES_STATE.search(line) else set())
            assert statuses and set(statuses) <= allowed, (line, out)
            if "POST localhost:8080/v1/jobs " in line:
                job_id = json.loads(out.splitlines()[0])["id"]
                server.wait(job_id, lambda j: j["status"] in ("succeeded", "failed"))
        assert job_id != "ID", "the job-submit example ran"
    finally:
        server.stop()


def test_set_up_command_1_runs_as_written_from_a_checkout(tmp_path: Path, cli: Cli) -> None:
    """README command 1 (the main job on the embedded defaults), each step as written, in a
    copy of the repository's samples; `pip install -e .` is the one step left out (the suite
    runs in an environment where it was done)."""
    line = next(line for line in readme_block("## Set up") if line.startswith("pip install"))
    steps = [step.strip() for step in line.split("&&")]
    assert steps[0] == "pip install -e ." and len(steps) >= 4, steps
    shutil.copytree(SAMPLES, tmp_path / "samples")
    for step in steps[1:]:
        assert step.startswith("headwater "), step
        done = subprocess.run(
            ["bash", "-c", step.replace("headwater ", f"{sys.executable} -m headwater.cli ", 1)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=cli.env,
        )  # fmt: skip
        assert done.returncode == 0, (step, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
    import polars as pl  # the multi-field feature set of the signals step, one column per pair

    columns = pl.read_parquet(tmp_path / ".hw" / "rows.parquet").columns
    assert {"value_mean", "value_std", "rpm_mean", "rpm_max", "status_last", "status_count_distinct"} <= set(
        columns
    )
    assert "value_sum" not in columns and "rpm_count" not in columns
    assert (tmp_path / ".hw" / "rows.parquet").stat().st_size > 0
