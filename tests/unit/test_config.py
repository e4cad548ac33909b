"""Configuration that fails loudly (issue #14): seed 001's variable names are aliases of settings
(the HEADWATER_ name wins), names of adapters headwater does not have yet are errors, and an
unknown headwater.toml key is an error naming the nearest valid one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from headwater.config import ALIASES, Settings, alias_values, load_settings, setting_source
from headwater.errors import ConfigError
from headwater.featuresets import build_feature_set


@pytest.fixture(autouse=True)
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No HEADWATER_ or seed variable and no headwater.toml of the caller's leaks into these tests."""
    for key in [k for k in os.environ if k.startswith("HEADWATER_") or k.upper() in ALIASES]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_alias_names_a_setting_or_is_only_checked() -> None:
    for name, alias in ALIASES.items():
        assert name.isupper() and not name.startswith("HEADWATER_")
        assert alias.setting is None or alias.setting in Settings.model_fields, name


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"WATERMARK_SECONDS": "5"}, "lateness_ms", 5000),  # seconds → milliseconds
        ({"WATERMARK_SECONDS": "0.25"}, "lateness_ms", 250),
        ({"LATE_EVENT_POLICY": "correct"}, "late_policy", "correct"),
        ({"SOURCE_INCLUDE": "**/*.md,**/*.txt"}, "include", ["**/*.md", "**/*.txt"]),
        ({"SOURCE_EXCLUDE": '["**/tmp/**"]'}, "exclude", ["**/tmp/**"]),
        ({"SOURCE_POLL_INTERVAL_SEC": "2.5"}, "poll_interval_seconds", 2.5),
        ({"NATS_URL": "nats://127.0.0.1:4222"}, "bus", "nats://127.0.0.1:4222"),
        ({"KAFKA_BROKERS": "k1:9092, k2:9092"}, "bus", "kafka://k1:9092,k2:9092"),
        ({"KAFKA_BROKERS": "kafka://k1:9092?ack_wait=5"}, "bus", "kafka://k1:9092?ack_wait=5"),
        ({"TOPIC_DOCS": "corpus"}, "topic_docs", "corpus"),
        ({"TOPIC_SIGNALS": "pumps"}, "topic_signals", "pumps"),
        ({"STREAM_CONCURRENCY": "7"}, "concurrency", 7),
        ({"STREAM_BATCH_SIZE": "50"}, "worker_batch_size", 50),
        ({"MAX_EMBED_BATCH": "64"}, "embed_batch_size", 64),
        ({"FEATURE_WINDOWS": "1s,1m"}, "windows", ["1s", "1m"]),
        ({"FEATURE_SET_VERSION": "4"}, "feature_set_version", 4),
        ({"OFFLINE_DATA_PATH": "/data/offline"}, "offline_store", "/data/offline"),
        ({"METADATA_DB_URL": "sqlite:////data/state.db"}, "metadata_store", "sqlite:////data/state.db"),
        (
            {"METADATA_DB_URL": "postgresql://app@db:5432/hw?schema=idx"},
            "metadata_store",
            "postgresql://app@db:5432/hw?schema=idx",
        ),
        ({"OFFLINE_FORMAT": "parquet", "VECTORSTORE_BACKEND": "LanceDB"}, "vector_store", None),
    ],
)
def test_an_alias_sets_its_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: object
) -> None:
    for key, text in env.items():
        monkeypatch.setenv(key, text)
    settings = load_settings()
    assert getattr(settings, field) == value
    if field != "vector_store":
        assert str(setting_source(field, {})) == f"environment ({next(iter(env))})"


def test_the_headwater_name_wins_and_a_flag_wins_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATERMARK_SECONDS", "5")
    monkeypatch.setenv("HEADWATER_LATENESS_MS", "700")
    assert load_settings().lateness_ms == 700
    assert str(setting_source("lateness_ms", {})) == "environment (HEADWATER_LATENESS_MS)"
    assert load_settings(lateness_ms=9).lateness_ms == 9
    # the shadowed alias is not even read: its text may be anything
    monkeypatch.setenv("WATERMARK_SECONDS", "abc")
    assert load_settings().lateness_ms == 700


def test_an_alias_beats_headwater_toml_and_a_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "headwater.toml").write_text('preset = "local"\nlate_policy = "hold"\n')
    monkeypatch.setenv("LATE_EVENT_POLICY", "correct")
    monkeypatch.setenv("STREAM_CONCURRENCY", "9")
    settings = load_settings()
    assert (settings.late_policy, settings.concurrency, settings.workers) == ("correct", 9, 2)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"WATERMARK_SECONDS": "abc"}, ["WATERMARK_SECONDS", "'abc'", "seconds"]),
        ({"WATERMARK_SECONDS": "-1"}, ["WATERMARK_SECONDS", "lateness_ms"]),
        ({"LATE_EVENT_POLICY": "sometimes"}, ["LATE_EVENT_POLICY", "sometimes", "late_policy"]),
        ({"STREAM_BATCH_SIZE": "many"}, ["STREAM_BATCH_SIZE", "many"]),
        ({"KAFKA_BROKERS": "nats://k1:4222"}, ["KAFKA_BROKERS", "nats://k1:4222", "HOST:PORT"]),
        (
            {"PULSAR_URL": "pulsar://p:6650"},
            ["PULSAR_URL", "Pulsar", "not supported yet", "nats://", "kafka://"],
        ),
        ({"TOPIC_DLQ": "dead"}, ["TOPIC_DLQ", "not supported yet", ".dlq"]),
        ({"OFFLINE_FORMAT": "delta"}, ["OFFLINE_FORMAT", "'delta'", "not supported yet", "delta:///PATH"]),
        (
            {"VECTORSTORE_BACKEND": "faiss"},
            ["VECTORSTORE_BACKEND", "'faiss'", "not supported yet", "lancedb"],
        ),
        ({"NATS_URL": "redis://r:6379"}, ["NATS_URL", "redis://", "nats://"]),
        (
            {"METADATA_DB_URL": "mysql://app:hunter2@db:3306/hw"},
            ["METADATA_DB_URL", "mysql://", "not supported yet", "sqlite:///", "postgresql://"],
        ),
    ],
)
def test_a_bad_or_unsupported_alias_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: list[str]
) -> None:
    for key, text in env.items():
        monkeypatch.setenv(key, text)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    assert "hunter2" not in message


def test_unsupported_adapters_are_refused_even_when_a_headwater_name_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADWATER_BUS", "memory://default")
    monkeypatch.setenv("PULSAR_URL", "pulsar://p:6650")
    with pytest.raises(ConfigError, match="PULSAR_URL"):
        load_settings()


def test_alias_values_leave_taken_fields_unread() -> None:
    assert alias_values({"WATERMARK_SECONDS": "2", "late_event_policy": "hold"}) == {
        "lateness_ms": 2000,
        "late_policy": "hold",
    }
    assert alias_values({"WATERMARK_SECONDS": "x"}, taken={"lateness_ms"}) == {}


@pytest.mark.parametrize(
    ("key", "nearest"),
    [("embeder", "embedder"), ("hom", "home"), ("windws", "windows"), ("polcy", "late_policy")],
)
def test_an_unknown_toml_key_names_the_nearest(tmp_path: Path, key: str, nearest: str) -> None:
    (tmp_path / "headwater.toml").write_text(f'{key} = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert repr(key) in message and repr(nearest) in message and "headwater.toml" in message


def test_a_seed_name_in_toml_says_which_key_to_write(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text("watermark_seconds = 5\n")
    with pytest.raises(ConfigError, match="lateness_ms"):
        load_settings()


def test_an_unknown_feature_set_key_names_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text('[feature_sets.pumps]\npolcy = "correct"\n')
    with pytest.raises(ConfigError, match=r"'polcy' in \[feature_sets.pumps\].*'policy'"):
        load_settings()
    with pytest.raises(ConfigError, match="'windws'"):
        build_feature_set("pumps", {"windws": ["1s"]})
    assert build_feature_set("pumps", {"policy": "hold", "lateness_ms": 5}).late_policy == "hold"


def test_known_toml_keys_and_tables_pass(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text(
        'embedder = "hash://"\nlate_policy = "hold"\n[feature_sets.pumps]\nversion = 2\nwindows = ["1s"]\n'
        'lateness = "1s"\npolicy = "correct"\ncorrect_horizon = "1m"\n'
    )
    settings = load_settings()
    assert settings.late_policy == "hold" and settings.feature_sets["pumps"]["version"] == 2
    source = setting_source("late_policy", {})
    assert source.kind == "headwater.toml" and source.where == str(tmp_path / "headwater.toml")


def test_sources_of_defaults_presets_and_flags() -> None:
    settings = load_settings(preset="local", home=Path("h"))
    assert str(setting_source("concurrency", {}, settings.preset)) == "preset local"
    assert str(setting_source("home", {"home": Path("h")}, settings.preset)) == "flag (--home)"
    assert str(setting_source("chunk_size_chars", {}, settings.preset)) == "default"


def test_a_flag_overrides_a_declared_key_whichever_spelling_each_uses() -> None:
    """``late_policy = "drop"`` in headwater.toml and ``--late-policy hold`` (passed on as
    ``policy``) once left the declared drop in place: both sides are normalized first."""
    declared = {"late_policy": "drop", "lateness_ms": 5000, "features": {"temp": ["mean"]}}
    spec = build_feature_set("c", declared, policy="hold", lateness="1s")
    assert (spec.late_policy, spec.lateness_ms) == ("hold", 1000)
    assert build_feature_set("c", {"policy": "correct"}, late_policy="hold").late_policy == "hold"
    assert [f.name for f in spec.features] == ["temp"]
    flagged = build_feature_set("c", declared, features="humidity:max;status:last")
    assert flagged.window_columns == ["humidity_max", "status_last"]  # flags replace the fields whole
    assert build_feature_set("c", declared).late_policy == "drop"


def test_feature_declarations_are_checked_with_what_to_do() -> None:
    cases = {
        "temp:median": "unknown aggregations ['median']",
        "temp": "expected FIELD:AGG",
        "row:count": "field name 'row' is reserved",
        "t-1:mean": "must be a letter or _",
        "status:last": None,
    }
    for text, problem in cases.items():
        if problem is None:
            assert build_feature_set("c", features=text).window_columns == ["status_last"]
            continue
        with pytest.raises(ConfigError, match=re.escape(problem)):
            build_feature_set("c", features=text)
    with pytest.raises(ConfigError, match="either features or field/aggregations"):
        build_feature_set("c", {"field": "value", "features": {"temp": ["mean"]}})
    with pytest.raises(ConfigError, match="no window aggregations"):
        build_feature_set("c", features="temp:ewma")
    legacy = build_feature_set("c", {"field": "rpm", "aggregations": ["mean", "max"]})
    assert legacy.window_columns == ["rpm_mean", "rpm_max"]
