"""User mistakes end in one line and the documented exit code, never a traceback (issue #13 item 7).

Each case runs the real console entry point in a subprocess, in a temporary working directory
(headwater.toml is read from there). ``--debug`` (or ``HEADWATER_DEBUG=1``) is the one way to see a
traceback: it re-raises every error, configuration errors included, so a bug report can show where
a wrong value was read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from headwater.cli.guard import DOCUMENTED_EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
EVENTS = SAMPLES / "signals" / "events.jsonl"


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    base.update({"HEADWATER_EMBEDDER": "hash://", "HEADWATER_WORKERS": "1", "PYTHONPATH": str(ROOT / "src")})
    base["COLUMNS"] = "200"  # keep click's one-line messages on one line
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The run exited ``code`` with a short message (no traceback) that names every one of ``names``."""
    both = result.stdout + result.stderr
    assert result.returncode == code, both
    assert "Traceback" not in both, both
    message = " ".join(line.strip(" │╭╮╰╯─") for line in result.stderr.splitlines() if line.strip(" │╭╮╰╯─"))
    lines = [line for line in result.stderr.splitlines() if line.strip(" │╭╮╰╯─")]
    assert 1 <= len(lines) <= 4, result.stderr  # click's usage errors add "Usage:" and "Try --help"
    for name in names:
        assert name in message, (name, message)
    return message


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_query_with_k_zero_is_a_usage_error(tmp_path: Path, home: Path) -> None:
    one_line(run(tmp_path, "query", "x", "-k", "0", "--home", str(home)), 2, "-k")


def test_comma_separated_windows_are_accepted(tmp_path: Path, home: Path) -> None:
    result = run(tmp_path, "ingest", "signals", str(EVENTS), "--home", str(home), "--json",
                 env={"HEADWATER_WINDOWS": "1s,5s"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_window_in_the_environment_names_the_variable(tmp_path: Path, home: Path) -> None:
    result = run(tmp_path, "ingest", "signals", str(EVENTS), "--home", str(home),
                 env={"HEADWATER_WINDOWS": "1s,bogus"})  # fmt: skip
    one_line(result, 3, "HEADWATER_WINDOWS", "bogus")


def test_a_comma_or_json_include_both_work(tmp_path: Path, home: Path) -> None:
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLES / "docs", corpus)
    md = len(list(corpus.rglob("*.md")))
    txt = len(list(corpus.rglob("*.txt")))
    for i, (value, expected) in enumerate(
        (("**/*.md", md), ('["**/*.md"]', md), ("**/*.md, **/*.txt", md + txt))
    ):
        where = str(tmp_path / f"h{i}")
        result = run(
            tmp_path, "ingest", "docs", str(corpus), "--home", where, env={"HEADWATER_INCLUDE": value}
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        status = json.loads(run(tmp_path, "status", "--home", where, "--json").stdout)
        assert status["documents"] == expected, value
    broken = run(tmp_path, "status", "--home", str(home), env={"HEADWATER_INCLUDE": '["**/*.md"'})
    one_line(broken, 3, "HEADWATER_INCLUDE", "comma-separated")


def test_source_roots_take_a_plain_path(tmp_path: Path, home: Path) -> None:
    for value in ("/srv/docs", "/srv/docs,/srv/more", '["/srv/docs"]'):
        result = run(tmp_path, "jobs", "list", "--home", str(home), env={"HEADWATER_API_SOURCE_ROOTS": value})
        assert result.returncode == 0, result.stderr


def test_settings_that_are_not_numbers_or_json_name_the_variable(tmp_path: Path, home: Path) -> None:
    one_line(run(tmp_path, "status", "--home", str(home), env={"HEADWATER_CHUNK_SIZE_CHARS": "ten"}),
             3, "HEADWATER_CHUNK_SIZE_CHARS", "ten")  # fmt: skip
    one_line(run(tmp_path, "status", "--home", str(home), env={"HEADWATER_FEATURE_SETS": "sensors"}),
             3, "HEADWATER_FEATURE_SETS", "JSON")  # fmt: skip
    one_line(run(tmp_path, "status", "--home", str(home), env={"HEADWATER_PRESET": "huge"}),
             3, "HEADWATER_PRESET", "standard")  # fmt: skip


def test_a_broken_headwater_toml_is_one_line(tmp_path: Path, home: Path) -> None:
    toml = tmp_path / "headwater.toml"
    toml.write_text("chunk_size_chars = \n")
    one_line(run(tmp_path, "status", "--home", str(home)), 3, str(toml), "TOML")
    toml.write_bytes(b"\xff\xfe embedder")
    one_line(run(tmp_path, "status", "--home", str(home)), 3, str(toml), "UTF-8")
    toml.write_text("chunk_size_chars = 10\n")
    one_line(run(tmp_path, "status", "--home", str(home)), 3, "chunk_size_chars", str(toml))


def test_wrong_arguments(tmp_path: Path, home: Path) -> None:
    one_line(run(tmp_path, "ingest", "docs", str(tmp_path), "--home", str(home), "--embedder", "bogus://x"),
             3, "bogus")  # fmt: skip
    one_line(run(tmp_path, "ingest", "docs", str(tmp_path / "missing"), "--home", str(home)), 3, "missing")
    one_line(run(tmp_path, "ingest", "signals", str(EVENTS), "--home", str(home), "--late-policy", "later"),
             2, "--late-policy")  # fmt: skip
    one_line(run(tmp_path, "ingest", "signals", str(EVENTS), "--home", str(home), "--lateness", "soon"),
             2, "--lateness", "soon")  # fmt: skip
    (tmp_path / "a-file").write_text("x")
    one_line(run(tmp_path, "status", "--home", str(tmp_path / "a-file")), 3, "--home", "not a folder")
    nowhere = str(tmp_path / "no" / "x.parquet")
    one_line(run(tmp_path, "features", "export", "--out", nowhere, "--home", str(home)), 1, "no/x.parquet")


def test_values_in_messages_lose_their_secrets(tmp_path: Path, home: Path) -> None:
    env = {"HEADWATER_EXCLUDE": '["https://user:hunter2@example.com/x"', "HEADWATER_API_TOKEN": "hunter3"}
    message = one_line(run(tmp_path, "status", "--home", str(home), env=env), 3, "HEADWATER_EXCLUDE")
    assert "hunter2" not in message and "hunter3" not in message


def test_debug_shows_the_traceback(tmp_path: Path, home: Path) -> None:
    """The decision: --debug and HEADWATER_DEBUG=1 re-raise every error, configuration errors too."""
    env = {"HEADWATER_CHUNK_SIZE_CHARS": "ten"}
    for args, extra in ((["--debug"], {}), ([], {"HEADWATER_DEBUG": "1"})):
        result = run(tmp_path, *args, "status", "--home", str(home), env={**env, **extra})
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "ConfigError" in result.stderr, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_with_one_line(tmp_path: Path, home: Path, signum: int) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "serve", "--home", str(home), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        proc.send_signal(signum)
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - started < 15
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in out + err
    assert "interrupted" in err.splitlines()[-1]


def test_serve_on_a_taken_port_and_with_bad_settings(tmp_path: Path, home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run(tmp_path, "serve", "--home", str(home), "--port", port, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "did not start" in result.stderr.splitlines()[-1]
    (tmp_path / "a-file").write_text("x")
    one_line(run(tmp_path, "serve", "--home", str(tmp_path / "a-file")), 3, "not a folder")
    one_line(run(tmp_path, "serve", "--home", str(home), "--host", "0.0.0.0"), 3, "HEADWATER_API_TOKEN")
    blank = run(tmp_path, "serve", "--home", str(home), "--host", "0.0.0.0", env={"HEADWATER_API_TOKEN": " "})
    one_line(blank, 3, "HEADWATER_API_TOKEN", "empty")  # "Bearer " must not open a public bind
    assert run(tmp_path, "serve", "--port", "0").returncode == 2


def test_every_code_seen_here_is_documented() -> None:
    assert {0, 1, 2, 3, 4, 5, 6, 70, 130, 143} == DOCUMENTED_EXIT_CODES
