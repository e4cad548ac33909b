"""The document workflow a user runs, through the real ``headwater`` command."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli


def ingest(cli: Cli, corpus: Path, home: Path, *extra: str) -> dict[str, object]:
    return cli.last_event("ingest", "docs", str(corpus), "--home", str(home), *extra)


def test_cold_ingest_then_idempotent_rerun(cli: Cli, corpus: Path, home: Path) -> None:
    first = ingest(cli, corpus, home)
    assert first["type"] == "RunCompleted"
    assert first["documents_seen"] == first["documents_added"] == 6
    assert first["chunks_embedded"] > 0 and first["documents_failed"] == 0
    before = cli.status(home)
    assert before["documents"] == 6 and before["vectors"] == before["chunks"] > 0 and before["dlq"] == 0

    second = ingest(cli, corpus, home)
    assert second["documents_unchanged"] == 6
    assert second["chunks_embedded"] == second["embed_calls"] == 0
    assert cli.status(home)["fingerprint"] == before["fingerprint"]


def test_touched_but_identical_files_are_not_reembedded(cli: Cli, corpus: Path, home: Path) -> None:
    ingest(cli, corpus, home)
    target = corpus / "guides" / "retries.md"
    target.write_bytes(target.read_bytes())  # new mtime, same bytes
    result = ingest(cli, corpus, home)
    assert result["documents_unchanged"] == 6 and result["chunks_embedded"] == 0


def test_change_and_delete_are_incremental(cli: Cli, corpus: Path, home: Path) -> None:
    ingest(cli, corpus, home)
    target = corpus / "guides" / "incremental.md"
    text = target.read_text()
    head, tail = text.split("## Crashes")
    target.write_text(head + "A brand new paragraph about compaction.\n\n## Crashes" + tail)
    (corpus / "guides" / "signals.md").unlink()

    result = ingest(cli, corpus, home)
    assert result["documents_updated"] == 1 and result["documents_deleted"] == 1
    assert result["documents_unchanged"] == 4
    assert 1 <= result["chunks_embedded"] <= 2  # only the new or changed chunk texts
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert not any(r["uri"] == "guides/signals.md" for r in rows)
    assert any("brand new paragraph" in r["text"] for r in rows)

    clean = home.parent / "clean"
    ingest(cli, corpus, clean)
    assert cli.status(home)["fingerprint"] == cli.status(clean)["fingerprint"]
    assert cli("verify", "--home", str(home)).returncode == 0


def test_query_and_export_contracts(cli: Cli, corpus: Path, home: Path) -> None:
    ingest(cli, corpus, home)
    hits = json.loads(cli("query", "exponential backoff", "--home", str(home), "-k", "3", "--json").stdout)
    assert len(hits) == 3
    assert set(hits[0]) >= {"doc_id", "uri", "chunk_id", "offset", "length", "score", "text"}
    source = (corpus / hits[0]["uri"]).read_text() if not hits[0]["uri"].endswith(".pdf") else None
    if source is not None:
        assert hits[0]["text"].split()[0] in source
    rows = [
        json.loads(line)
        for line in cli("export", "--format", "jsonl", "--home", str(home)).stdout.splitlines()
    ]
    assert len(rows) == cli.status(home)["vectors"]
    assert all(len(r["text"]) == r["length"] for r in rows)


def test_plain_progress_and_summary_without_json(cli: Cli, corpus: Path, home: Path) -> None:
    result = cli("ingest", "docs", str(corpus), "--home", str(home))
    assert "documents added: 6" in result.stdout
    assert "\x1b[" not in result.stderr  # no terminal animation in a pipe


def test_configuration_and_usage_errors_have_exit_codes(cli: Cli, corpus: Path, home: Path) -> None:
    missing = cli("ingest", "docs", str(corpus / "nope"), "--home", str(home), check=False)
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    bad_scheme = cli("ingest", "docs", str(corpus), "--home", str(home), "--embedder", "nope://", check=False)
    assert bad_scheme.returncode == 3 and "nope" in bad_scheme.stderr
    usage = cli("ingest", "docs", check=False)
    assert usage.returncode == 2
    env_bad = cli(
        "ingest",
        "docs",
        str(corpus),
        "--home",
        str(home),
        check=False,
        env={"HEADWATER_CHUNK_SIZE_CHARS": "ten"},
    )
    assert env_bad.returncode == 3 and "chunk_size_chars" in env_bad.stderr


def test_switching_embedder_on_an_index_is_refused(cli: Cli, corpus: Path, home: Path) -> None:
    ingest(cli, corpus, home)
    other = cli(
        "ingest", "docs", str(corpus), "--home", str(home), "--embedder", "hash://?dim=64", check=False
    )
    assert other.returncode == 3 and "built with embedder" in other.stderr and "new --home" in other.stderr


def test_failures_go_to_the_dlq_and_replay(cli: Cli, corpus: Path, home: Path) -> None:
    bad = corpus / "broken.md"
    bad.write_bytes(b"fine start \xff\xfe\xfa broken")
    result = ingest(cli, corpus, home)
    assert result["documents_failed"] == 1 and result["documents_added"] == 6
    letters = json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout)
    assert len(letters) == 1
    assert letters[0]["input_ref"] == "broken.md" and letters[0]["error_type"] == "InputError"
    assert "invalid UTF-8 at byte 11" in letters[0]["message"] and letters[0]["stage"] == "extract"
    shown = json.loads(cli("dlq", "show", str(letters[0]["id"]), "--home", str(home)).stdout)
    assert "Traceback" in shown["traceback"]

    again = ingest(cli, corpus, home)  # unchanged bad file: skipped with a reason, not a new DLQ entry
    assert again["documents_skipped"] == 1 and again["documents_failed"] == 0
    assert len(json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout)) == 1
    assert (
        cli("ingest", "docs", str(corpus), "--home", str(home), "--fail-on-error", check=False).returncode
        == 0
    )

    bad.write_text("fixed now")
    replayed = cli.json_lines("dlq", "replay", str(letters[0]["id"]), "--home", str(home), "--json")
    assert replayed[-1]["documents_added"] + replayed[-1]["documents_updated"] == 1
    assert json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout) == []
    assert cli.status(home)["documents_done"] == 7


def test_fail_on_error_exits_one(cli: Cli, corpus: Path, home: Path) -> None:
    (corpus / "bad.pdf").write_bytes(b"%PDF-1.7 garbage")
    result = cli("ingest", "docs", str(corpus), "--home", str(home), "--fail-on-error", check=False)
    assert result.returncode == 1


def test_verify_detects_and_repairs_a_damaged_vector_store(cli: Cli, corpus: Path, home: Path) -> None:
    import lancedb
    import numpy as np

    ingest(cli, corpus, home)
    clean = cli.status(home)["fingerprint"]
    table = lancedb.connect(str(home / "vectors")).open_table("chunks")
    rows = table.search().limit(None).to_list()
    table.delete(f"chunk_id = '{rows[0]['chunk_id']}'")  # a lost vector
    orphan = {k: rows[1][k] for k in ("doc_id", "uri", "offset", "length", "chunk_hash", "text")}
    table.add([{**orphan, "chunk_id": "orphan-1", "vector": np.ones(384, dtype=np.float32) / np.sqrt(384)}])

    broken = cli("verify", "--home", str(home), "--json", check=False)
    assert broken.returncode == 1
    report = json.loads(broken.stdout)["before"]
    assert report["lost"] == [rows[0]["chunk_id"]] and report["orphans"] == ["orphan-1"]

    repaired = cli("verify", "--home", str(home), "--repair", "--json", check=False)
    assert repaired.returncode == 0, repaired.stdout
    assert json.loads(repaired.stdout)["after"]["ok"] is True
    assert cli.status(home)["fingerprint"] == clean
