"""The same corpus through the CLI into every vector store: the same index (fingerprint), the same
answers (``query``'s top hits and scores), ``verify`` clean; and a store that is down or wrongly
named ends the run with its exit code, nothing dead-lettered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.reliability.test_docs_crash import VECTOR_STORES, StoreCli
from tests.servers import ServerProcess, free_port

QUESTIONS = ["how do retries work?", "windowed features from signals", "crash recovery"]


def _answers(cli: Cli, home: Path) -> list[list[tuple[str, float]]]:
    out = []
    for question in QUESTIONS:
        (hits,) = cli.json_lines("query", question, "--home", str(home), "-k", "4", "--json")
        out.append([(h["chunk_id"], round(h["score"], 5)) for h in hits])
    return out


def test_every_store_builds_the_same_index_and_answers_alike(
    cli: Cli, corpus: Path, tmp_path: Path, pgvector_server: ServerProcess
) -> None:
    results = {}
    for kind in VECTOR_STORES:
        store_cli, home = StoreCli(cli.env, kind, pgvector_server), tmp_path / f"home-{kind}"
        store_cli("ingest", "docs", str(corpus), "--home", str(home))
        status = store_cli.status(home)
        assert status["vector_store"].startswith(f"{kind}://")
        assert store_cli("verify", "--home", str(home), check=False).returncode == 0
        results[kind] = (status["fingerprint"], status["vectors"], _answers(store_cli, home))
    reference = results["lancedb"]
    assert reference[1] > 0 and all(reference[2])
    for kind, got in results.items():
        assert got == reference, kind


def test_a_store_that_is_down_stops_the_run_with_exit_5(cli: Cli, corpus: Path, home: Path) -> None:
    url = f"pgvector://me:s3cret@127.0.0.1:{free_port()}/db?table=chunks"
    done = cli(
        "ingest", "docs", str(corpus), "--home", str(home), check=False, env={"HEADWATER_VECTOR_STORE": url}
    )
    assert done.returncode == 5, done.stderr
    assert "store unavailable" in done.stderr and "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert cli.json_lines("dlq", "list", "--home", str(home), "--json") == [[]]


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("pgvector://{netloc}/nowhere?table=chunks", 'database "nowhere" does not exist'),
        ("pgvector://{netloc}/postgres?table=bad-name", "is not a plain name"),
        ("faiss:relative/path", "must look like faiss:///"),
    ],
)
def test_a_wrong_store_setting_is_one_line_and_exit_3(
    cli: Cli, corpus: Path, home: Path, pgvector_server: ServerProcess, store: str, message: str
) -> None:
    url = store.format(netloc=pgvector_server.netloc)  # type: ignore[attr-defined]
    done = cli(
        "ingest", "docs", str(corpus), "--home", str(home), check=False, env={"HEADWATER_VECTOR_STORE": url}
    )
    assert done.returncode == 3, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    if home.exists():  # the store is checked before any document is read: nothing is dead-lettered
        assert cli.json_lines("dlq", "list", "--home", str(home), "--json") == [[]]


def test_the_stores_can_be_named_by_flags(
    cli: Cli, corpus: Path, tmp_path: Path, pgvector_server: ServerProcess, unique: str
) -> None:
    """``--vector-store`` and ``--metadata-store`` beat the environment, like every flag."""
    netloc = pgvector_server.netloc  # type: ignore[attr-defined]
    flags = [
        "--vector-store", f"faiss://{tmp_path}/flagged-faiss",
        "--metadata-store", f"postgresql://{netloc}/postgres?schema=f{unique}",
    ]  # fmt: skip
    ignored = {"HEADWATER_VECTOR_STORE": f"faiss://{tmp_path}/from-env"}
    home, reference = tmp_path / "flagged", tmp_path / "reference"
    cli("ingest", "docs", str(corpus), "--home", str(home), *flags, env=ignored)
    cli("ingest", "docs", str(corpus), "--home", str(reference))
    (got,) = cli.json_lines("status", "--home", str(home), *flags, "--json")
    assert got["fingerprint"] == cli.status(reference)["fingerprint"]
    assert got["vector_store"].endswith("flagged-faiss") and not (tmp_path / "from-env").exists()
    migrated = cli("migrate", "--home", str(home), flags[2], flags[3])
    assert "up to date" in migrated.stdout + migrated.stderr
    assert cli("verify", "--home", str(home), *flags, check=False).returncode == 0
