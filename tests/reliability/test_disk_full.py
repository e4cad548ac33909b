"""A full disk is an ordinary event (issue #13): the run stops with one line and exit 6, no input
is dead-lettered for it, and once space is freed the same command converges to the index (or
feature stores) of one clean run.

The home (or one of its stores) lives on a small tmpfs mounted for the test, so the disk really
fills part-way through a run; the corpus lives outside it. Freeing space is a remount with a
larger size. Mounting needs root (CI runs as root); elsewhere these tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.reliability.test_docs_crash import make_corpus
from tests.reliability.test_signals_crash import _bench, stores

DOCS = 3000  # ~14 MB of markdown, ~13k chunks: a home of ~40 MB (vectors ~20 MB, WAL up to 16 MB)
BIG = "500m"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        return subprocess.CompletedProcess(["mount"], 127, "", "no mount command")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size``, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small tmpfs, and mounting one needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the disk-full tests need it")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def free_space(folder: Path) -> None:
    """What a user does about it: more room on the same disk."""
    grown = _mount("-o", f"remount,size={BIG}", str(folder))
    assert grown.returncode == 0, grown.stderr


def ingest(cli: Cli, corpus: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    args = ("ingest", "docs", str(corpus), "--home", str(home), "--json")
    return cli(*args, check=False, env=env, timeout=120)


def assert_stopped_for_the_disk(done: subprocess.CompletedProcess[str], where: Path) -> str:
    """Exit 6 and one line (no traceback, nothing at exit) naming the file or folder under ``where``."""
    assert done.returncode == 6, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert line.startswith("no space left on device: "), line
    assert "free some space and run the same command again" in line, line
    named = line.removeprefix("no space left on device: ").split(";")[0]
    assert named.startswith(str(where)), line
    return named


def assert_nothing_dead_lettered(cli: Cli, home: Path, **env: str) -> None:
    letters = json.loads(cli("dlq", "list", "--home", str(home), "--json", "--all", env=env).stdout)
    assert letters == [], letters


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("disk-full") / "corpus"
    make_corpus(root, DOCS, seed=13)
    return root


@pytest.fixture(scope="module")
def clean(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """status of one clean run of the corpus, on a disk with room."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    cli = Cli({**env, "HEADWATER_EMBEDDER": "hash://", "HEADWATER_WORKERS": "2"})
    home = tmp_path_factory.mktemp("clean") / "home"
    assert ingest(cli, corpus, home).returncode == 0
    return cli.status(home)


# (the tmpfs holds: the whole home | the home, vectors elsewhere | the vectors only), its size,
# and what the line must name: each store fills in its own way (Lance: a RuntimeError "LanceError(IO):
# No space left on device (os error 28)"; SQLite: "database or disk is full" while its WAL grows).
CASES = {
    "home": ("home", "25m", ""),
    "sqlite": ("home", "16m", "state.db"),
    "lancedb": ("vectors", "6m", "vectors"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_docs_stop_on_a_full_disk_then_converge(
    cli: Cli, corpus: Path, clean: dict[str, object], tmp_path: Path, case: str
) -> None:
    on, size, names = CASES[case]
    with tmpfs(tmp_path / "disk", size) as disk:
        home = disk / "home" if on == "home" else tmp_path / "home"
        env = {}
        if case != "home":  # the vector store on its own disk: the tmpfs, or one with room
            env["HEADWATER_VECTOR_STORE"] = f"lancedb://{(disk if on == 'vectors' else tmp_path) / 'vectors'}"
        full = ingest(cli, corpus, home, **env)
        named = assert_stopped_for_the_disk(full, disk)
        assert named.endswith(names), named
        events = [json.loads(line) for line in full.stdout.splitlines()]
        done = sum(e["type"] == "DocumentCompleted" for e in events)
        assert 0 < done < DOCS, "the disk must fill part-way through the run"
        assert not any(e["type"] in ("DocumentFailed", "RunCompleted") for e in events)

        free_space(disk)  # (even SQLite's readers need a little room: the DLQ is read after)
        assert_nothing_dead_lettered(cli, home, **env)
        again = ingest(cli, corpus, home, **env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout.splitlines()[-1])["documents_failed"] == 0
        got = json.loads(cli("status", "--home", str(home), "--json", env=env).stdout)
        for key in ("fingerprint", "documents", "chunks", "vectors", "dlq"):
            assert got[key] == clean[key], key
        verdict = cli("verify", "--home", str(home), check=False, env=env)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_docs_into_a_home_that_is_already_full(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        (disk / "home").mkdir()
        with (disk / "ballast").open("wb") as ballast, contextlib.suppress(OSError):
            while True:
                ballast.write(b"\0" * 65536)
        assert shutil.disk_usage(disk).free == 0
        assert_stopped_for_the_disk(ingest(cli, corpus, disk / "home"), disk)
        (disk / "ballast").unlink()
        free_space(disk)
        assert ingest(cli, corpus / "part0", disk / "home").returncode == 0


def test_signals_stop_on_a_full_disk_then_converge(tmp_path: Path) -> None:
    inputs = tmp_path / "events"
    _bench().generate(inputs, 80_000, entities=50, part_rows=40_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    cli = Cli({**env, "POLARS_MAX_THREADS": "2", "HEADWATER_CHECKPOINT_INTERVAL_SECONDS": "0"})
    args = ("--feature-set", "sensors", "--batch-events", "3000", "--json")
    clean_home = tmp_path / "clean"
    cli("ingest", "signals", str(inputs), "--home", str(clean_home), *args)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        home = disk / "home"
        full = cli("ingest", "signals", str(inputs), "--home", str(home), *args, check=False, timeout=120)
        assert_stopped_for_the_disk(full, disk)
        free_space(disk)
        assert_nothing_dead_lettered(cli, home)
        cli("ingest", "signals", str(inputs), "--home", str(home), *args, timeout=120)
        got, want = stores(home), stores(clean_home)
        assert got[0].equals(want[0]) and got[1].equals(want[1])
        assert got[2] == want[2] and got[3] == want[3]
