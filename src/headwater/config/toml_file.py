"""``headwater.toml``: where it is, reading it, and refusing what it must not hold. An unknown
top-level key is an error naming the nearest valid one: a typo such as ``embeder`` would
otherwise be ignored, and the default used."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from headwater.config.aliases import ALIASES
from headwater.errors import ConfigError

TOML_FILE = "headwater.toml"  # relative: the file in the current directory


def read_toml_table() -> dict[str, Any]:
    """The file's table; empty when it is missing or unreadable (loading reports those)."""
    try:
        return tomllib.loads(Path(TOML_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def toml_problem(exc: BaseException) -> str:
    where = Path(TOML_FILE).resolve()
    if isinstance(exc, tomllib.TOMLDecodeError):
        why = f"not valid TOML ({exc})"
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text (byte {exc.start})"
    else:
        why = f"cannot be read ({type(exc).__name__}: {getattr(exc, 'strerror', None) or exc})"
    return f"{where} {why}: fix it or remove it (settings also come from HEADWATER_* variables)"


def check_toml_keys(table: Mapping[str, Any], known: Collection[str], where: str | None = None) -> None:
    """An unknown top-level key (one not in ``known``, the Settings fields) is an error naming it
    and the nearest valid one (a typo such as ``embeder`` would otherwise be ignored, and the
    default used)."""
    unknown = [key for key in table if key not in known]
    if not unknown:
        return
    path = where or str(Path(TOML_FILE).resolve())
    problems = "; ".join(_unknown_key(key, known) for key in unknown)
    msg = f"invalid configuration: {path}: {problems}: fix or remove it (`headwater config show` lists all)"
    raise ConfigError(msg)


def _unknown_key(key: str, known: Collection[str]) -> str:
    alias = ALIASES.get(key.upper())
    if alias is not None and alias.setting is not None:
        return f"unknown key {key!r}: {key.upper()} is an environment variable, here write {alias.setting}"
    return f"unknown key {key!r}{did_you_mean(key, known)}"


def did_you_mean(key: str, choices: Collection[str]) -> str:
    """``" (did you mean 'embedder'?)"``, or nothing when no choice is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
