"""The root ``headwater`` command, its ``ingest`` group and the options every command takes
(``--debug``, ``--version``); the command modules add themselves to these on import.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from headwater.cli.guard import set_debug

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="Ingest documents and signals for AI systems: incremental, crash-safe, observable.",
)
ingest_app = typer.Typer(no_args_is_help=True, help="Run an ingestion once (batch).")
app.add_typer(ingest_app, name="ingest")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"headwater {version('headwater')}")
        raise typer.Exit


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of errors \\[env HEADWATER_DEBUG=1]")
    ] = False,
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    set_debug(debug)
