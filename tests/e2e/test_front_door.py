"""Commands that would silently do nothing refuse, and the CLI says what it is (issue #14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, Cli

READERS = [
    ["query", "retries"],
    ["status", "--json"],
    ["export"],
    ["verify"],
    ["optimize"],
    ["dlq", "list"],
    ["dlq", "show", "1"],
    ["dlq", "replay", "--all"],
    ["features", "get", "pump-1", "--json"],
    ["features", "export", "--out", "rows.parquet"],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_a_command_on_a_home_that_does_not_exist_exits_2_and_creates_nothing(
    command: list[str], cli: Cli, tmp_path: Path
) -> None:
    """A mistyped --home used to be created and answered from as an empty index (exit 0)."""
    missing = tmp_path / "no-such-home"
    result = cli(*command, "--home", str(missing), check=False)
    assert result.returncode == 2, result.stderr
    assert f"no headwater home at {missing}" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not missing.exists()


def test_readers_work_on_a_home_once_something_was_ingested(cli: Cli, corpus: Path, home: Path) -> None:
    cli("ingest", "docs", str(corpus), "--home", str(home))
    for command in (["status", "--json"], ["query", "retries"], ["dlq", "list"], ["verify"]):
        assert cli(*command, "--home", str(home), check=False).returncode == 0, command


def test_version(cli: Cli) -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.stdout.strip() == f"headwater {version('headwater')}"


def test_ingest_of_one_file_indexes_it_as_part_of_its_folder(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    """``ingest docs FILE`` used to answer "does not exist or is not a directory"."""
    one = sorted(corpus.rglob("*.md"))[0]
    single, whole = tmp_path / "single", tmp_path / "whole"
    final = cli.last_event("ingest", "docs", str(one), "--home", str(single))
    assert (final["documents_seen"], final["documents_added"]) == (1, 1)
    cli("ingest", "docs", str(one.parent), "--home", str(whole))
    rows = {json.loads(line)["doc_id"] for line in cli("export", "--home", str(single)).stdout.splitlines()}
    every = {json.loads(line)["doc_id"] for line in cli("export", "--home", str(whole)).stdout.splitlines()}
    assert len(rows) == 1 and rows <= every, "the id a run over its folder gives that file"
    again = cli.last_event("ingest", "docs", str(one), "--home", str(single))
    assert again["documents_unchanged"] == 1 and again["documents_deleted"] == 0


def test_a_run_that_dead_lettered_says_how_many_and_where_to_look(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text("# Fine\n\nA good document.\n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really" * 3)
    result = cli("ingest", "docs", str(folder), "--home", str(tmp_path / "home"))
    assert "documents failed: 1" in result.stdout
    home = tmp_path / "home"
    expected = f"1 document(s) failed and are in the dead-letter queue: `headwater dlq list --home {home}`"
    assert expected in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "signals", "events.jsonl"],
        ["watch", ".", "--once", "--home", "home"],
        ["worker", "docs", "--home", "home"],
        ["worker", "signals", "--home", "home"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_bus_commands_without_a_bus_refuse(command: list[str], cli: Cli, tmp_path: Path) -> None:
    """They used to publish to (or consume from) an in-process memory bus and lose everything."""
    (tmp_path / "events.jsonl").write_text('{"entity_id": "a", "event_time": 1, "sequence": 1, "value": 1}\n')
    result = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *command],
        capture_output=True, text=True, env=cli.env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "no bus given: set --bus" in result.stderr and "Traceback" not in result.stderr


def test_features_commands_know_the_homes_feature_sets(cli: Cli, tmp_path: Path) -> None:
    home, out = str(tmp_path / "home"), str(tmp_path / "rows.parquet")
    cli("ingest", "signals", str(SAMPLES / "signals"), "--home", home, "--feature-set", "pumps")
    only = cli("features", "export", "--home", home, "--out", out)  # the home's only set
    assert "wrote 0 rows" not in only.stderr and "wrote" in only.stderr
    assert json.loads(cli("features", "get", "pump-1", "--home", home, "--json").stdout)
    unknown = cli("features", "export", "--home", home, "--out", out, "--feature-set", "pumsp", check=False)
    assert unknown.returncode == 3 and "no feature set 'pumsp' (it has: pumps)" in unknown.stderr
    cli("ingest", "signals", str(SAMPLES / "signals"), "--home", home, "--feature-set", "valves")
    several = cli("features", "get", "pump-1", "--home", home, check=False)
    assert several.returncode == 3 and "several feature sets (pumps, valves)" in several.stderr
