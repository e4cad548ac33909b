"""kill -9 at named points and at random times, then a re-run: the index must equal a clean run's
(same fingerprint, ``verify`` passes), on every vector store. The crash points are in the
pipeline (pipeline/faults.py)."""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.servers import ServerProcess

CRASH_POINTS = [
    "after_extract",
    "mid_upsert",
    "after_upsert",
    "after_commit",
    "after_cleanup",
    "during_delete",
]


VECTOR_STORES = ["lancedb", "faiss", "pgvector", "chroma"]
SERVERS = {"pgvector": "pgvector_server", "chroma-server": "chroma_server"}


class StoreCli(Cli):
    """The CLI with each home's own vector store: every command that names ``--home H`` gets
    ``HEADWATER_VECTOR_STORE`` for H (a store outside the home, as a team would configure it),
    and with ``metadata``, ``HEADWATER_METADATA_STORE`` too: a schema of the server's database."""

    def __init__(
        self, env: dict[str, str], kind: str, server: ServerProcess | None, *, metadata: bool = False
    ) -> None:
        super().__init__(env)
        self.kind, self.server, self.metadata = kind, server, metadata

    def store_for(self, home: Path) -> str | None:
        if self.kind in ("faiss", "chroma"):
            return f"{self.kind}://{home.resolve()}-{self.kind}"
        name = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
        if self.kind == "pgvector" and self.server is not None:
            return f"pgvector://{self.server.netloc}/postgres?table=h_{name}"  # type: ignore[attr-defined]
        if self.kind == "chroma-server" and self.server is not None:
            return f"chroma://{self.server.hostport}/h{name}"  # type: ignore[attr-defined]
        return None  # lancedb: the home's default

    def metadata_for(self, home: Path) -> str | None:
        if not self.metadata or self.server is None:
            return None
        schema = "m_" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
        return f"postgresql://{self.server.netloc}/postgres?schema={schema}"  # type: ignore[attr-defined]

    def __call__(self, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        if "--home" in args and (url := self.store_for(Path(args[args.index("--home") + 1]))):
            env = {"HEADWATER_VECTOR_STORE": url, **(env or {})}
        if "--home" in args and (url := self.metadata_for(Path(args[args.index("--home") + 1]))):
            env = {"HEADWATER_METADATA_STORE": url, **(env or {})}
        return super().__call__(*args, env=env, **kwargs)


@pytest.fixture(params=[*VECTOR_STORES, "chroma-server"])
def store_cli(request: pytest.FixtureRequest, cli: Cli) -> StoreCli:
    server = request.getfixturevalue(SERVERS[request.param]) if request.param in SERVERS else None
    return StoreCli(cli.env, request.param, server)


def make_corpus(root: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    words = "retry backoff vector chunk window signal embed index store crash replay watermark".split()  # noqa: SIM905
    for i in range(n):
        folder = root / f"part{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        paragraphs = [
            " ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) for _ in range(rng.randint(2, 8))
        ]
        (folder / f"doc{i:04d}.md").write_text(f"# Document {i}\n\n" + "\n\n".join(paragraphs))


def mutate(root: Path) -> None:
    """Two files changed, one deleted, one added: every kind of work in one run."""
    for name in ("part0/doc0000.md", "part1/doc0001.md"):
        path = root / name
        path.write_text(path.read_text().replace("\n\n", "\n\nInserted paragraph about compaction.\n\n", 1))
    (root / "part2" / "doc0002.md").unlink()
    (root / "part3" / "new.md").write_text("# New\n\nA document added after the first run.")


def ingest(cli: Cli, corpus: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "ingest",
        "docs",
        str(corpus),
        "--home",
        str(home),
        "--json",
        check=False,
        env={"HEADWATER_COMMIT_BATCH_CHUNKS": "8", **env},
    )


def assert_converged(cli: Cli, corpus: Path, home: Path, tmp_path: Path) -> None:
    final = ingest(cli, corpus, home)
    assert final.returncode == 0, final.stderr
    clean = tmp_path / "clean-home"
    shutil.rmtree(clean, ignore_errors=True)
    assert ingest(cli, corpus, clean).returncode == 0
    got, want = cli.status(home), cli.status(clean)
    if isinstance(cli, StoreCli):  # each home on its own store of the kind under test
        assert got["vector_store"].startswith(f"{cli.kind.split('-')[0]}://"), got["vector_store"]
        assert got["vector_store"] != want["vector_store"]
    assert got["fingerprint"] == want["fingerprint"]
    assert (got["documents"], got["chunks"], got["vectors"]) == (
        want["documents"],
        want["chunks"],
        want["vectors"],
    )
    verdict = cli("verify", "--home", str(home), check=False)
    assert verdict.returncode == 0, verdict.stdout


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_named_point_then_rerun_converges(store_cli: StoreCli, tmp_path: Path, point: str) -> None:
    cli = store_cli
    corpus, home = tmp_path / "corpus", tmp_path / "home"
    make_corpus(corpus, 30, seed=7)
    assert ingest(cli, corpus, home).returncode == 0
    mutate(corpus)
    crashed = ingest(cli, corpus, home, HEADWATER_CRASH_AT=point)
    assert crashed.returncode == -signal.SIGKILL, f"crash point {point} was never reached: {crashed.stderr}"
    assert_converged(cli, corpus, home, tmp_path)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_named_point_with_postgres_metadata_then_rerun_converges(
    cli: Cli, pgvector_server: ServerProcess, tmp_path: Path, point: str
) -> None:
    """Vectors in pgvector and the metadata in a PostgreSQL schema: nothing of the index is in the home."""
    store_cli = StoreCli(cli.env, "pgvector", pgvector_server, metadata=True)
    test_kill_at_named_point_then_rerun_converges(store_cli, tmp_path, point)


def test_kill_at_random_times_then_rerun_converges(store_cli: StoreCli, tmp_path: Path) -> None:
    """Killed after a random number of completed documents (wall-clock delays depend on the machine)."""
    cli = store_cli
    corpus, home = tmp_path / "corpus", tmp_path / "home"
    make_corpus(corpus, 300, seed=11)
    rng = random.Random(3)
    killed = 0
    for round_ in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater.cli",
                "ingest",
                "docs",
                str(corpus),
                "--home",
                str(home),
                "--json",
            ],
            env={
                **cli.env,
                "HEADWATER_COMMIT_BATCH_CHUNKS": "64",
                **({"HEADWATER_VECTOR_STORE": url} if (url := cli.store_for(home)) else {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        assert proc.stdout is not None
        target, done = rng.randint(1, 60), 0
        for line in proc.stdout:
            done += '"DocumentCompleted"' in line
            if done >= target:
                proc.send_signal(signal.SIGKILL)
                killed += 1
                break
        proc.wait()
        if round_ == 0:
            mutate(corpus)
    assert killed >= 2, "runs finished before the chosen number of documents completed"
    assert_converged(cli, corpus, home, tmp_path)


def test_poison_input_that_kills_the_process_reaches_the_dlq(cli: Cli, tmp_path: Path) -> None:
    corpus, home = tmp_path / "corpus", tmp_path / "home"
    make_corpus(corpus, 12, seed=5)
    poison = "part1/doc0006.md"
    runs = [ingest(cli, corpus, home, HEADWATER_CRASH_AT=f"extract@{poison}") for _ in range(4)]
    assert [r.returncode for r in runs[:3]] == [-signal.SIGKILL] * 3
    assert runs[3].returncode == 0, runs[3].stderr
    letters = cli.json_lines("dlq", "list", "--home", str(home), "--json")[0]
    assert [letter["input_ref"] for letter in letters] == [poison]
    assert "gave up after 3 attempts" in letters[0]["message"]
    status = cli.status(home)
    assert status["documents_done"] == 11 and status["documents_failed"] == 1
