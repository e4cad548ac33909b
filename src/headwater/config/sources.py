"""Where one setting's effective value came from (``headwater config show`` lists it; a loading
error names it): a flag, ``HEADWATER_X``, the seed's name, headwater.toml, the preset, or the
default, the winner first."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from headwater.config.aliases import alias_env_name
from headwater.config.settings import ENV_PREFIX
from headwater.config.toml_file import TOML_FILE, read_toml_table
from headwater.presets import PRESETS

SourceKind = Literal["flag", "environment", "home", "headwater.toml", "preset", "default"]
"""Where a setting can come from, the winner first. ``home``: settings recorded in the home; no
home records any yet (another item of issue #14), so ``setting_source`` never answers it today."""


@dataclass(frozen=True, slots=True)
class SettingSource:
    """Where one setting's effective value came from: ``kind`` and, for most kinds, ``where``
    (the option, the variable, the headwater.toml path or the preset's name)."""

    kind: SourceKind
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "preset":
            return f"preset {self.where}"
        return f"{self.kind} ({self.where})" if self.where else self.kind


def setting_source(field: str, flags: Mapping[str, Any], preset: str | None = None) -> SettingSource:
    """The source ``Settings`` took ``field`` from, given the flags passed to ``load_settings`` and
    the effective preset: flag, ``HEADWATER_X``, the seed's name, headwater.toml, preset, default."""
    if flags.get(field) is not None:
        return SettingSource("flag", f"--{_OPTIONS.get(field, field.replace('_', '-'))}")
    env = env_name(field)
    if env is not None:
        return SettingSource("environment", env)
    alias = alias_env_name(field)
    if alias is not None:
        return SettingSource("environment", alias)
    if field in read_toml_table():
        return SettingSource("headwater.toml", str(Path(TOML_FILE).resolve()))
    if preset is not None and preset in PRESETS and field in PRESETS[preset].settings:
        return SettingSource("preset", preset)
    return SettingSource("default")


_OPTIONS = {  # CLI options whose name is not the setting's
    "chunk_size_chars": "chunk-size",
    "chunk_overlap_chars": "chunk-overlap",
    "micro_batch_events": "batch-events",
    "worker_batch_size": "batch-size",
    "max_concurrent_jobs": "max-jobs",
    "idle_timeout_seconds": "idle-timeout",
    "poll_interval_seconds": "interval",
    "topic_docs": "topic",
    "topic_signals": "topic",
    "feature_set_version": "feature-version",
}


def env_name(field: str) -> str | None:
    wanted = f"{ENV_PREFIX}{field}".lower()
    return next((key for key in os.environ if key.lower() == wanted), None)
