"""``load_settings``: ``Settings`` built from its sources, then reconciled with what the home
records; whatever is wrong becomes one line naming the setting, where it came from, its value
(never a secret's), why, and what to do."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from headwater.config.settings import ENV_PREFIX, LIST_HINT, Settings
from headwater.config.sources import env_name, setting_source
from headwater.errors import ConfigError
from headwater.redaction import redact_text


def load_settings(*, rebuild: bool = False, index: bool = True, **overrides: Any) -> Settings:
    """Build settings; whatever is wrong becomes a one-line ConfigError that names the setting (the
    option, ``HEADWATER_X`` or the headwater.toml key), its value (never a secret's), why, and what
    to do. The home's recorded index settings apply last (``home_settings``: what was not asked
    for comes from the home; a conflicting request is refused unless ``rebuild``)."""
    from headwater.home_settings import reconcile  # it imports headwater.config

    return reconcile(_build(overrides), rebuild=rebuild, index=index)


def _build(overrides: dict[str, Any]) -> Settings:
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**clean)
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = "; ".join(
            _problem(err["loc"], err["msg"], err.get("input"), clean) for err in exc.errors()
        )
        msg = f"invalid configuration: {problems}"
        raise ConfigError(msg) from exc
    except SettingsError as exc:
        raise ConfigError(_settings_problem(exc)) from exc
    except Exception as exc:  # any other way reading the settings fails is still a configuration error
        msg = f"cannot read the configuration: {type(exc).__name__}: {redact_text(str(exc))[:300]}"
        raise ConfigError(msg) from exc


_SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
)


def _problem(loc: tuple[int | str, ...], why: str, value: Any, overrides: dict[str, Any]) -> str:
    """``chunk_size_chars = 'ten' (from HEADWATER_CHUNK_SIZE_CHARS): why; what to do``."""
    field = str(loc[0]) if loc else ""
    why = why.removeprefix("Value error, ")
    if field not in Settings.model_fields:
        return why
    where, fix = _source(field, overrides)
    if where in os.environ:  # HEADWATER_X or the seed's name: what the user wrote, not its parse
        value = os.environ[where]
    if field in {"include", "exclude", "windows", "api_source_roots"} and "valid list" in why:
        why = f"{why} ({LIST_HINT})"
    return f"{field} = {_show(field, value)} (from {where}): {why}; {fix}"


def _source(field: str, overrides: dict[str, Any]) -> tuple[str, str]:
    """Where a field's value came from (the first source that has it wins) and how to fix it there."""
    source = setting_source(field, overrides)
    if source.kind == "flag":
        return f"the command line: {source.where}", "give another value"
    if source.kind == "environment":
        return source.where, f"fix {source.where} or unset it"
    if source.kind == "headwater.toml":
        return source.where, "fix or remove that key"
    return "the defaults", f"set {ENV_PREFIX}{field.upper()}"


def _show(field: str, value: Any) -> str:
    if field in _SECRET_FIELDS:
        return "(hidden)"
    if isinstance(value, Path):
        value = str(value)
    text = redact_text(repr(value if not isinstance(value, SecretStr) else "(hidden)"))
    return text if len(text) <= 80 else f"{text[:77]}..."


def _settings_problem(exc: SettingsError) -> str:
    """pydantic-settings could not even parse a value (``HEADWATER_FEATURE_SETS`` that is not JSON)."""
    match = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    cause = exc.__cause__
    why = f"{cause}" if cause is not None else str(exc)
    if match is None:
        return f"invalid configuration: {redact_text(str(exc))}: {redact_text(why)}"
    field, source = match.groups()
    if source.startswith("Env") and (env := env_name(field)) is not None:
        value = _show(field, os.environ[env])
        problem = f"{field} = {value} (from {env}): not valid JSON ({why})"
        return f"invalid configuration: {problem}; fix {env} or unset it"
    return f"invalid configuration: {field} (from {source}): {redact_text(why)}"
