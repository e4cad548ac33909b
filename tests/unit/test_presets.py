"""Presets: one table sizes the pipeline and the embedder's limiter, and never overrides what a
user set explicitly (init arguments, environment, headwater.toml)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headwater import load_settings
from headwater.adapters.hashembed import HashEmbedder
from headwater.adapters.openai import OpenAIEmbedder
from headwater.compose import make_embedder
from headwater.config import Settings
from headwater.errors import ConfigError
from headwater.pipeline.ratelimit import LIMITER_PRESETS, LimiterConfig
from headwater.presets import PRESETS

NAMES = ["local", "standard", "high-throughput"]
URL = "http://127.0.0.1:9/v1/embeddings?model=m&dimensions=8"


@pytest.fixture(autouse=True)
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No HEADWATER_ variable and no headwater.toml of the caller's leaks into these tests."""
    for key in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_table_holds_seed_004s_three_profiles() -> None:
    assert list(PRESETS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_gives_valid_settings_and_limiter(name: str) -> None:
    settings = load_settings(preset=name)
    assert {field: getattr(settings, field) for field in PRESETS[name].settings} == PRESETS[name].settings
    assert LIMITER_PRESETS[name] == LimiterConfig(**PRESETS[name].limiter)


def test_presets_grow_from_local_to_high_throughput() -> None:
    for field in (
        "concurrency",
        "embed_batch_size",
        "commit_batch_chunks",
        "queue_size",
        "worker_batch_size",
    ):
        sizes = [PRESETS[name].settings[field] for name in NAMES]
        assert sizes == sorted(sizes), field
    rates = [LIMITER_PRESETS[name].max_rate_per_second for name in NAMES]
    assert rates == sorted(rates)


def test_standard_is_the_defaults() -> None:
    plain, standard = Settings(), Settings(preset="standard")
    assert plain.model_dump(exclude={"preset"}) == standard.model_dump(exclude={"preset"})


def test_explicit_values_beat_the_preset_wherever_they_come_from(
    clean_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_PRESET", "local")
    monkeypatch.setenv("HEADWATER_QUEUE_SIZE", "7")
    (clean_config / "headwater.toml").write_text("embed_batch_size = 3\n")
    settings = load_settings(concurrency=9)
    local = PRESETS["local"].settings
    assert (settings.preset, settings.queue_size, settings.embed_batch_size, settings.concurrency) == (
        "local",
        7,  # environment
        3,  # headwater.toml
        9,  # init argument (the CLI's options)
    )
    assert settings.commit_batch_chunks == local["commit_batch_chunks"]  # not set anywhere: the preset
    assert settings.workers == local["workers"]


def test_a_preset_in_headwater_toml_applies(clean_config: Path) -> None:
    (clean_config / "headwater.toml").write_text('preset = "high-throughput"\n')
    assert load_settings().queue_size == PRESETS["high-throughput"].settings["queue_size"]


def test_an_unknown_preset_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="preset") as info:
        load_settings(preset="turbo")
    assert all(name in str(info.value) for name in ["'turbo'", *NAMES])


def test_the_embedder_takes_its_limiter_from_the_preset_unless_the_url_names_one() -> None:
    from_setting = make_embedder(load_settings(embedder=URL, preset="local"))
    assert isinstance(from_setting, OpenAIEmbedder)
    assert from_setting.limiter.config == LIMITER_PRESETS["local"]
    assert from_setting.rate_limit == LIMITER_PRESETS["local"].rate_per_second

    from_url = make_embedder(load_settings(embedder=f"{URL}&preset=high-throughput", preset="local"))
    assert isinstance(from_url, OpenAIEmbedder)
    assert from_url.limiter.config == LIMITER_PRESETS["high-throughput"]

    default = make_embedder(load_settings(embedder=URL))
    assert isinstance(default, OpenAIEmbedder)
    assert default.limiter.config == LIMITER_PRESETS["standard"]


def test_embedders_without_a_limiter_ignore_the_preset() -> None:
    assert isinstance(make_embedder(load_settings(embedder="hash://", preset="local")), HashEmbedder)
