"""A home whose metadata lives in PostgreSQL (``HEADWATER_METADATA_STORE=postgresql://…?schema=S``,
or the seed's ``METADATA_DB_URL``): the same index as a default home, a re-run that embeds
nothing, the dead-letter queue and ``verify`` on it, and ``headwater migrate``."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from headwater.adapters.postgres import LATEST_VERSION
from tests.conftest import Cli
from tests.servers import ServerProcess


def _metadata_url(server: ServerProcess, schema: str) -> str:
    return f"postgresql://{server.netloc}/postgres?schema={schema}"  # type: ignore[attr-defined]


def test_a_postgres_metadata_home_builds_the_same_index_and_reruns_for_free(
    cli: Cli, corpus: Path, tmp_path: Path, pgvector_server: ServerProcess, unique: str
) -> None:
    default_home, home = tmp_path / "default", tmp_path / "home"
    cli("ingest", "docs", str(corpus), "--home", str(default_home))
    pg = {"HEADWATER_METADATA_STORE": _metadata_url(pgvector_server, f"e{unique}")}
    first = cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=pg)
    assert first["documents_added"] > 0 and first["documents_failed"] == 0

    def status(env: dict[str, str]) -> dict[str, object]:
        data: dict[str, object] = json.loads(cli("status", "--home", str(home), "--json", env=env).stdout)
        return data

    want, got = cli.status(default_home), status(pg)
    assert not (home / "state.db").exists()
    with psycopg.connect(pgvector_server.url) as conn:  # type: ignore[attr-defined]
        (in_postgres,) = conn.execute(f"SELECT count(*) FROM e{unique}.documents").fetchone() or (0,)
    assert in_postgres == got["documents"]
    for key in ("fingerprint", "documents", "chunks", "vectors", "dlq", "documents_done"):
        assert got[key] == want[key], key

    # The seed's name for the same store: the re-run reads the listing from PostgreSQL, embeds nothing.
    seed = {"METADATA_DB_URL": pg["HEADWATER_METADATA_STORE"]}
    again = cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=seed)
    assert again["type"] == "RunCompleted"
    assert again["documents_unchanged"] == first["documents_added"]
    assert again["chunks_embedded"] == again["embed_calls"] == 0
    assert status(seed)["fingerprint"] == want["fingerprint"]

    assert json.loads(cli("dlq", "list", "--home", str(home), "--json", env=pg).stdout) == []
    assert cli("verify", "--home", str(home), env=pg, check=False).returncode == 0
    migrated = cli("migrate", "--home", str(home), "--json", env=pg)
    assert json.loads(migrated.stdout)["schema_version_after"] == LATEST_VERSION


def test_failures_go_to_the_postgres_dlq_and_replay(
    cli: Cli, corpus: Path, home: Path, pgvector_server: ServerProcess, unique: str
) -> None:
    pg = {"HEADWATER_METADATA_STORE": _metadata_url(pgvector_server, f"q{unique}")}
    bad = corpus / "broken.md"
    bad.write_bytes(b"fine start \xff\xfe\xfa broken")
    result = cli.last_event("ingest", "docs", str(corpus), "--home", str(home), env=pg)
    assert result["documents_failed"] == 1
    letters = json.loads(cli("dlq", "list", "--home", str(home), "--json", env=pg).stdout)
    assert [(lt["input_ref"], lt["stage"]) for lt in letters] == [("broken.md", "extract")]
    shown = json.loads(cli("dlq", "show", str(letters[0]["id"]), "--home", str(home), env=pg).stdout)
    assert "Traceback" in shown["traceback"]
    bad.write_text("fixed now")
    replayed = cli.json_lines("dlq", "replay", str(letters[0]["id"]), "--home", str(home), "--json", env=pg)
    assert replayed[-1]["documents_added"] + replayed[-1]["documents_updated"] == 1
    assert json.loads(cli("dlq", "list", "--home", str(home), "--json", env=pg).stdout) == []


def test_migrate_says_a_sqlite_home_needs_nothing_and_a_down_server_is_exit_5(cli: Cli, home: Path) -> None:
    said = cli("migrate", "--home", str(home))
    assert "managed automatically" in said.stdout
    down = cli(
        "migrate",
        "--home",
        str(home),
        env={"HEADWATER_METADATA_STORE": "postgresql://me:s3cret@127.0.0.1:1/db"},
        check=False,
    )
    assert down.returncode == 5 and "s3cret" not in down.stderr + down.stdout
