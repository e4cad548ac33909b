"""The shipped examples run as documented; the real MiniLM model ranks the right document first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli


def test_python_api_example_runs(tmp_path: Path, cli: Cli) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "index_and_query.py"),
            str(ROOT / "samples" / "docs"),
            str(tmp_path / "home"),
        ],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=180,
        check=True,
    )
    assert "done: 6 added, 0 unchanged" in result.stdout
    assert result.stdout.count("indexed ") == 6


def test_progress_example_prints_progress_and_a_summary(tmp_path: Path, cli: Cli) -> None:
    """The README's Python API example (examples/progress.py)."""
    args = [sys.executable, str(ROOT / "examples" / "progress.py"), str(ROOT / "samples" / "docs")]
    result = subprocess.run(
        [*args, str(tmp_path / "home")], capture_output=True, text=True, env=cli.env, timeout=180, check=True
    )
    lines = result.stdout.splitlines()
    assert any(line.startswith("6 indexed, 0 skipped, 0 failed") for line in lines), result.stdout
    assert lines[-1].startswith("done in ") and "6 added, 0 unchanged" in lines[-1]


@pytest.mark.slow
def test_minilm_finds_the_retries_guide(cli: Cli, corpus: Path, home: Path) -> None:
    pytest.importorskip("sentence_transformers", reason="needs the [local] extra")
    env = {"HEADWATER_EMBEDDER": "minilm://"}
    final = cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=env)
    assert final["documents_added"] == 6
    hits = json.loads(
        cli("query", "how do retries work?", "--home", str(home), "-k", "3", "--json", env=env).stdout
    )
    assert hits[0]["uri"] == "guides/retries.md"
    assert hits[0]["score"] > hits[-1]["score"]
    again = cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=env)
    assert again["chunks_embedded"] == 0
