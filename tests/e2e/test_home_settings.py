"""A home remembers how its index was built (issue #14): later commands use the same settings by
default, a conflicting request is refused with one line, ``--rebuild`` re-chunks in place, and an
unchanged bad file is dead-lettered once whatever the settings changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli


@pytest.fixture
def plain(cli: Cli) -> Cli:
    """No HEADWATER_EMBEDDER in the environment: the home's embedder is the default."""
    return Cli({k: v for k, v in cli.env.items() if k != "HEADWATER_EMBEDDER"})


def ingest(cli: Cli, corpus: Path, home: Path, *flags: str) -> dict[str, object]:
    return cli.last_event("ingest", "docs", str(corpus), "--home", str(home), *flags)


def test_later_commands_use_the_homes_embedder_and_chunker(plain: Cli, corpus: Path, home: Path) -> None:
    first = ingest(plain, corpus, home, "--embedder", "hash://?dim=64", "--chunk-size", "300", "--pii-scrub")
    again = ingest(plain, corpus, home)  # no flags: the home's settings, nothing re-embedded
    assert again["documents_unchanged"] == first["documents_added"] and again["chunks_embedded"] == 0
    status = json.loads(plain("status", "--home", str(home), "--json").stdout)
    assert status["embedder"] == "hash:shake256:64"
    hits = json.loads(plain("query", "retries", "--home", str(home), "--json").stdout)
    assert hits, "the query was embedded with the home's 64-dimensional embedder"
    recorded = json.loads((home / "index.json").read_text())
    assert recorded["chunk_size_chars"] == 300 and recorded["pii_scrub"] is True
    assert recorded["embedder"] == "hash://?dim=64" and recorded["dimensions"] == 64


def test_a_conflicting_setting_is_refused_in_one_line(plain: Cli, corpus: Path, home: Path) -> None:
    ingest(plain, corpus, home, "--chunk-size", "300")
    refused = plain("ingest", "docs", str(corpus), "--home", str(home), "--chunk-size", "500", check=False)
    assert refused.returncode == 3
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "chunk_size_chars = 300" in line and "500" in line and "--rebuild" in line and "new --home" in line
    other = plain("query", "x", "--home", str(home), "--embedder", "hash://?dim=32", check=False)
    assert other.returncode == 3 and "embedder" in other.stderr


def test_rebuild_rechunks_in_place_and_becomes_the_homes_setting(
    plain: Cli, corpus: Path, home: Path, tmp_path: Path
) -> None:
    ingest(plain, corpus, home, "--chunk-size", "300")
    rebuilt = ingest(plain, corpus, home, "--chunk-size", "500", "--rebuild")
    assert rebuilt["documents_updated"] == rebuilt["documents_seen"]
    fresh = tmp_path / "fresh"
    ingest(plain, corpus, fresh, "--chunk-size", "500")
    fingerprint = json.loads(plain("status", "--home", str(home), "--json").stdout)["fingerprint"]
    assert fingerprint == json.loads(plain("status", "--home", str(fresh), "--json").stdout)["fingerprint"]
    assert ingest(plain, corpus, home)["chunks_embedded"] == 0  # 500 is the home's now


def status_of(cli: Cli, home: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(cli("status", "--home", str(home), "--json").stdout)
    return data


def test_rebuild_with_another_embedder_switches_only_when_complete(
    plain: Cli, corpus: Path, home: Path, tmp_path: Path
) -> None:
    """The new index is built beside the current one: while it is built (and after a kill -9
    of the rebuild) every command answers from the old index, whole; a complete rebuild switches
    every later command at once; a fresh home built with the new embedder has the same index."""
    import subprocess
    import sys
    import time

    ingest(plain, corpus, home)
    before = status_of(plain, home)
    args = ["ingest", "docs", str(corpus), "--home", str(home), "--embedder", "hash://?dim=32"]
    refused = plain(*args, check=False)
    assert refused.returncode == 3 and "--rebuild" in refused.stderr

    slow = "hash://?dim=32&delay_ms=1500"  # one embed call per chunk: a rebuild of ~10 s
    args = [*args[:-1], slow, "--rebuild"]
    env = {**plain.env, "HEADWATER_COMMIT_BATCH_CHUNKS": "1", "HEADWATER_EMBED_BATCH_SIZE": "1"}
    doomed = subprocess.Popen([sys.executable, "-m", "headwater.cli", *args], env=env)
    try:
        time.sleep(2.5)  # part-way through
        assert doomed.poll() is None, "the rebuild was expected to take longer"
        assert status_of(plain, home) == before  # the old index, whole, with its embedder
        assert plain("query", "retries", "--home", str(home), "--json").stdout.strip() != "[]"
        doomed.kill()  # kill -9 mid-rebuild
        doomed.wait()
    finally:
        if doomed.poll() is None:
            doomed.kill()
    assert status_of(plain, home) == before

    done = plain.last_event(*args[:-2], "hash://?dim=32", "--rebuild")
    assert done["documents_failed"] == 0
    after = status_of(plain, home)
    assert after["embedder"] == "hash:shake256:32" and after["documents"] == before["documents"]
    fresh = tmp_path / "fresh"
    ingest(plain, corpus, fresh, "--embedder", "hash://?dim=32")
    assert after["fingerprint"] == status_of(plain, fresh)["fingerprint"]
    assert json.loads(plain("query", "retries", "--home", str(home), "--json").stdout)  # no --embedder
    assert ingest(plain, corpus, home)["chunks_embedded"] == 0  # the new index is the home's now

    # Back to the first embedder: the index two switches old is deleted, the previous one kept.
    ingest(plain, corpus, home, "--embedder", "hash://", "--rebuild")
    assert status_of(plain, home)["fingerprint"] == before["fingerprint"]
    assert not (home / "vectors").exists() and not (home / "state.db").exists()
    assert (home / "vectors-g1").is_dir() and (home / "vectors-g2").is_dir()


def test_an_unchanged_bad_file_is_dead_lettered_once_across_settings_changes(
    plain: Cli, corpus: Path, home: Path
) -> None:
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 truncated" * 4)
    ingest(plain, corpus, home, "--chunk-size", "300")
    for size in ("400", "500"):
        final = ingest(plain, corpus, home, "--chunk-size", size, "--rebuild")
        assert final["documents_failed"] == 0 and final["documents_skipped"] == 1
    assert json.loads(plain("status", "--home", str(home), "--json").stdout)["dlq"] == 1


def test_config_show_names_the_home_as_the_source_of_its_index_settings(
    plain: Cli, corpus: Path, home: Path
) -> None:
    ingest(plain, corpus, home, "--chunk-size", "300")
    rows = {r["name"]: r for r in json.loads(plain("config", "show", "--home", str(home), "--json").stdout)}
    assert rows["chunk_size_chars"]["value"] == 300 and rows["chunk_size_chars"]["source"] == "home"
    assert rows["embed_batch_size"]["source"] == "default"


def test_commands_that_do_not_touch_the_index_ignore_another_homes_embedder(
    plain: Cli, corpus: Path, home: Path
) -> None:
    """A HEADWATER_EMBEDDER exported for another home must not lock out the DLQ or jobs."""
    ingest(plain, corpus, home, "--embedder", "hash://?dim=64")
    env = {"HEADWATER_EMBEDDER": "hash://?dim=32"}
    for command in (["dlq", "list"], ["jobs", "list"]):
        assert plain(*command, "--home", str(home), env=env, check=False).returncode == 0, command
    assert plain("status", "--home", str(home), env=env, check=False).returncode == 3
