"""CLI for the configuration: ``config show`` prints every effective setting and its source.

A source is one of ``headwater.config.SourceKind``: a flag of this command, an environment
variable (``HEADWATER_X`` or seed 001's name, e.g. ``WATERMARK_SECONDS``), ``headwater.toml``,
the preset, the home (the index settings it recorded: ``home_settings``), or the default.
Secrets never show: the API token is masked whole, and credentials
inside URLs or secret-named parameters are masked by ``headwater.redaction``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from headwater import home_settings
from headwater.cli.app import app, out
from headwater.cli.guard import run_guarded
from headwater.config import Settings, load_settings, setting_source
from headwater.redaction import MASK, redact_value

config_app = typer.Typer(no_args_is_help=True, help="Show the effective configuration.")

# Store settings left unset mean a URL derived from the home: show the URL actually used.
_DERIVED = {
    "vector_store": "vector_store_url",
    "metadata_store": "metadata_store_url",
    "online_store": "online_store_url",
    "offline_store": "offline_store_url",
}


app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    home: Annotated[
        Path | None, typer.Option("--home", help="State folder \\[env HEADWATER_HOME; default ./.headwater]")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Sizing profile: local | standard | high-throughput \\[env HEADWATER_PRESET]"),
    ] = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help="\\[env HEADWATER_EMBEDDER]")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every effective setting and where it came from (flag, environment, headwater.toml, preset,
    default); secrets masked. A setting that is wrong anywhere fails here too, exit 3."""
    flags: dict[str, Any] = {"home": home, "preset": preset, "embedder": embedder}
    rows = run_guarded(lambda: describe(load_settings(home=home, preset=preset, embedder=embedder), flags))
    if json_out:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("setting", no_wrap=True, min_width=max(len(row["name"]) for row in rows))
    table.add_column("source", no_wrap=True)
    table.add_column("value", overflow="fold")
    for row in rows:
        source = _source_text(row["source"], row["where"])
        table.add_row(Text(row["name"]), Text(source, style="dim"), Text(_text(row["value"])))
    # piped (grep, a CI log): one line per setting, however long, rather than folded at 80 columns
    (out if out.is_terminal else Console(width=10_000)).print(table)


def describe(settings: Settings, flags: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{name, value, source, where}`` per setting, in the order Settings declares them."""
    values = settings.model_dump(mode="json")
    remembered = set(home_settings.recorded(settings.home) or {}) & set(home_settings.INDEX_FIELDS)
    rows = []
    for name, field in Settings.model_fields.items():
        value = values[name]
        if "SecretStr" in str(field.annotation):
            value = MASK if value is not None else None
        elif value is None and name in _DERIVED:
            value = getattr(settings, _DERIVED[name])
        source = setting_source(name, flags, settings.preset)
        kind, where = source.kind, source.where
        if kind == "default" and name in remembered:  # nobody asked: the home's recorded value
            kind, where = "home", str(settings.home / home_settings.FILE)
        value = redact_value(value)
        rows.append({"name": name, "value": value, "source": kind, "where": where})
    return rows


def _source_text(kind: str, where: str) -> str:
    if kind == "preset":
        return f"preset {where}"
    if kind == "headwater.toml":
        return kind  # the one in the working directory (--json gives its path)
    return f"{kind} ({where})" if where else kind


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
