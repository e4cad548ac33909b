"""Settings: command-line flags, then environment variables with the ``HEADWATER_`` prefix, then
seed 001's variable names (``WATERMARK_SECONDS``, ``LATE_EVENT_POLICY``, … — ``ALIASES``), then
``headwater.toml``, then the preset, then defaults.

The CLI only ever overrides fields of this one object, so every option also has its environment
variable (``--embedder`` ↔ ``HEADWATER_EMBEDDER``) and the Python API sees the same values.
Nothing is silently ignored: an unknown ``headwater.toml`` key, a seed variable with a bad value
and a seed variable naming an adapter headwater does not have yet are configuration errors.

The modules: ``settings`` (the model), ``loading`` (``load_settings`` and its one-line errors),
``sources`` (where a value came from), ``aliases`` (the seed's names), ``toml_file``
(headwater.toml) and ``urls`` (a home's default store URLs and index generations).
"""

from headwater.config.aliases import ALIASES, Alias, AliasSettingsSource, Converter, alias_values
from headwater.config.loading import load_settings
from headwater.config.settings import ENV_PREFIX, LIST_HINT, PathList, Settings, StrList
from headwater.config.sources import SettingSource, SourceKind, setting_source
from headwater.config.toml_file import TOML_FILE, check_toml_keys, did_you_mean
from headwater.config.urls import generation_name

__all__ = [
    "ALIASES",
    "ENV_PREFIX",
    "LIST_HINT",
    "TOML_FILE",
    "Alias",
    "AliasSettingsSource",
    "Converter",
    "PathList",
    "SettingSource",
    "Settings",
    "SourceKind",
    "StrList",
    "alias_values",
    "check_toml_keys",
    "did_you_mean",
    "generation_name",
    "load_settings",
    "setting_source",
]
