"""Configuration that fails loudly, through the real ``headwater`` command (issue #14).

Each case runs the console entry point in a subprocess, in a temporary working directory
(headwater.toml is read from there), with no HEADWATER_ or seed 001 variable of the caller's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from headwater.config import ALIASES

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "samples" / "signals" / "events.jsonl"


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_") and k.upper() not in ALIASES
    }
    base.update({"HEADWATER_WORKERS": "1", "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"})
    result = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=180,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def show(cwd: Path, *flags: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result = run(cwd, "config", "show", "--json", *flags, env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def config_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 3 and one line naming every one of ``words``."""
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_seed_names_take_effect_on_ingest_signals(tmp_path: Path) -> None:
    seed = {"LATE_EVENT_POLICY": "correct", "WATERMARK_SECONDS": "5"}
    rows = show(tmp_path, env=seed)
    assert rows["late_policy"] == {
        "name": "late_policy",
        "value": "correct",
        "source": "environment",
        "where": "LATE_EVENT_POLICY",
    }
    assert (rows["lateness_ms"]["value"], rows["lateness_ms"]["where"]) == (5000, "WATERMARK_SECONDS")

    def final(home: str, env: dict[str, str] | None) -> dict[str, Any]:
        result = run(tmp_path, "ingest", "signals", str(EVENTS), "--home", home, "--json", env=env)
        assert result.returncode == 0, result.stderr
        event: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        return event

    plain, seeded = final("plain", None), final("seeded", seed)
    # the defaults (drop, 2 s) correct nothing; the seed's names (correct, 5 s) do
    assert plain["late_corrected"] == 0
    assert seeded["late_corrected"] > 0


def test_the_headwater_name_wins_over_the_seed_name(tmp_path: Path) -> None:
    rows = show(tmp_path, env={"LATE_EVENT_POLICY": "correct", "HEADWATER_LATE_POLICY": "hold"})
    assert (rows["late_policy"]["value"], rows["late_policy"]["where"]) == ("hold", "HEADWATER_LATE_POLICY")


def test_an_adapter_not_supported_yet_is_exit_3_and_one_line(tmp_path: Path) -> None:
    line = config_error(
        run(tmp_path, "ingest", "signals", str(EVENTS), "--home", "h", env={"PULSAR_URL": "pulsar://p:6650"}),
        "PULSAR_URL",
        "not supported yet",
        "nats://",
    )
    assert "configuration error" in line
    assert not (tmp_path / "h").exists()  # refused before anything was created
    secret = "mysql://app:hunter2@db:3306/hw"
    line = config_error(
        run(tmp_path, "config", "show", env={"METADATA_DB_URL": secret}), "METADATA_DB_URL", "mysql"
    )
    assert "hunter2" not in line
    config_error(
        run(tmp_path, "config", "show", env={"WATERMARK_SECONDS": "abc"}), "WATERMARK_SECONDS", "abc"
    )


def test_an_unknown_toml_key_is_exit_3_naming_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text('embeder = "minilm://"\n')
    config_error(run(tmp_path, "status", "--home", "h"), "'embeder'", "'embedder'", "headwater.toml")
    config_error(run(tmp_path, "config", "show"), "'embeder'", "'embedder'")
    (tmp_path / "headwater.toml").write_text('[feature_sets.pumps]\npolcy = "correct"\n')
    config_error(run(tmp_path, "ingest", "signals", str(EVENTS), "--home", "h"), "'polcy'", "'policy'")


def test_config_show_names_every_source_and_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text('chunk_size_chars = 500\npreset = "local"\n')
    env = {
        "HEADWATER_API_TOKEN": "s3cret-token-value",
        "HEADWATER_BUS": "nats://user:pa55word@127.0.0.1:4222",
        "STREAM_BATCH_SIZE": "77",
    }
    rows = show(tmp_path, "--home", str(tmp_path / "h"), "--embedder", "hash://", env=env)
    sources = {name: (row["source"], row["where"]) for name, row in rows.items()}
    assert sources["home"] == ("flag", "--home")
    assert sources["embedder"] == ("flag", "--embedder")
    assert sources["chunk_size_chars"] == ("headwater.toml", str(tmp_path / "headwater.toml"))
    assert sources["preset"] == ("headwater.toml", str(tmp_path / "headwater.toml"))
    assert sources["concurrency"] == ("preset", "local")
    assert sources["worker_batch_size"] == ("environment", "STREAM_BATCH_SIZE")
    assert rows["worker_batch_size"]["value"] == 77  # the seed's name beats the preset's 100
    assert sources["api_token"] == ("environment", "HEADWATER_API_TOKEN")
    assert sources["late_policy"] == ("default", "")
    assert rows["api_token"]["value"] == "***"
    assert rows["bus"]["value"] == "nats://***@127.0.0.1:4222"
    assert rows["metadata_store"]["value"] == f"sqlite:///{tmp_path / 'h'}/state.db"
    for flags in ([], ["--preset", "high-throughput"]):
        result = run(tmp_path, "config", "show", *flags, env=env)
        assert result.returncode == 0, result.stderr
        assert "s3cret" not in result.stdout and "pa55word" not in result.stdout
    assert show(tmp_path, "--preset", "high-throughput", env=env)["preset"]["source"] == "flag"
    table = run(tmp_path, "config", "show", env=env).stdout
    assert "preset local" in table and "environment (STREAM_BATCH_SIZE)" in table


def test_topic_names_from_the_seed_reach_the_bus_and_the_flag_wins(tmp_path: Path, nats_server: Any) -> None:
    def topic(*flags: str) -> str:
        args = ("publish", "signals", str(EVENTS), "--json", "--bus", nats_server.url, *flags)
        result = run(tmp_path, *args, env={"TOPIC_SIGNALS": "pumps"})
        assert result.returncode == 0, result.stderr
        name: str = json.loads(result.stdout.splitlines()[-1])["topic"]
        return name

    assert topic() == "pumps"
    assert topic("--topic", "valves") == "valves"


def test_feature_set_version_reaches_ingest_signals(tmp_path: Path) -> None:
    """Seed 001's FEATURE_SET_VERSION versions the rows of a backfill."""
    home = str(tmp_path / "home")
    env = {"FEATURE_SET_VERSION": "7"}
    result = run(tmp_path, "ingest", "signals", str(EVENTS), "--home", home, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["feature_set_version"] == 7


def test_storage_options_reach_config_show_with_their_credentials_masked(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text(
        '[storage_options]\nendpoint_url = "http://127.0.0.1:9000"\nkey = "AKIAIOSFODNN7EXAMPLE"\n'
        'secret = "wJalrXUtnFEMI-secret"\nconnection_string = "AccountName=a;AccountKey=c2VjcmV0"\n'
    )
    rows = show(tmp_path, "--home", str(tmp_path / "h"))
    assert rows["storage_options"]["source"] == "headwater.toml"
    assert rows["storage_options"]["value"] == {
        "endpoint_url": "http://127.0.0.1:9000", "key": "***", "secret": "***", "connection_string": "***",
    }  # fmt: skip
    table = run(tmp_path, "config", "show").stdout
    for secret in ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "c2VjcmV0"):
        assert secret not in table
