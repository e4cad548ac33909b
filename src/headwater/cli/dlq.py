"""``headwater dlq``: list, show and replay dead-lettered inputs (``ops.dead_letters``)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from headwater.cli.app import app, err, out
from headwater.cli.guard import run_guarded
from headwater.cli.options import EmbedderOpt, HomeOpt, JsonOpt, home_settings

dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and replay the dead-letter queue.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include replayed entries")] = False,
) -> None:
    """List dead-lettered inputs."""
    from headwater.ops.dead_letters import list_letters

    settings = run_guarded(lambda: home_settings(home=home, index=False))
    letters = run_guarded(lambda: asyncio.run(list_letters(settings, include_replayed=all_, limit=100_000)))
    if json_out:
        sys.stdout.write(json.dumps([_letter_dict(lt, full=False) for lt in letters]) + "\n")
        return
    for lt in letters:
        out.print(f"{lt.id}\t{lt.kind}\t{lt.stage}\t{lt.error_type}\t{lt.input_ref}\t{lt.message[:120]}")


@dlq_app.command("show")
def dlq_show(letter_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1)], home: HomeOpt = None) -> None:
    """Show one entry with its full context (traceback included)."""
    from headwater.ops.dead_letters import get_letter

    letter = run_guarded(lambda: asyncio.run(get_letter(home_settings(home=home, index=False), letter_id)))
    if letter is None:
        err.print(f"no DLQ entry {letter_id}")
        raise typer.Exit(1)
    sys.stdout.write(json.dumps(_letter_dict(letter, full=True), indent=2) + "\n")


@dlq_app.command("replay")
def dlq_replay(
    letter_id: Annotated[int | None, typer.Argument(min=1, max=2**63 - 1, help="Entry to replay")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every open entry")] = False,
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    bus: Annotated[
        str | None, typer.Option("--bus", help="Where dead-lettered messages go back \\[env HEADWATER_BUS]")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-run dead-lettered documents and republish dead-lettered bus messages to their topic;
    those that fail again get a new entry."""
    from headwater.ops.dead_letters import replay_documents, replay_messages

    if (letter_id is None) == (not all_):
        err.print("give an entry ID or --all")
        raise typer.Exit(2)
    ids = None if all_ else [letter_id] if letter_id is not None else None
    settings = run_guarded(lambda: home_settings(home=home, embedder=embedder, bus=bus))
    finals = run_guarded(lambda: asyncio.run(replay_documents(settings, ids)))
    messages = run_guarded(lambda: asyncio.run(replay_messages(settings, ids)))
    if messages and not json_out:
        from headwater.pipeline.stream import redact_url

        out.print(f"republished {messages} dead-lettered message(s) to {redact_url(settings.bus)}")
    for final in finals:
        if json_out:
            from headwater.events import to_json

            sys.stdout.write(to_json(final).decode() + "\n")
        else:
            out.print(
                f"replayed: {final.documents_added + final.documents_updated} indexed, "
                f"{final.documents_failed} failed again"
            )


def _letter_dict(letter: Any, *, full: bool) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(letter)
    data["payload"] = letter.payload.decode("utf-8", "replace") if letter.payload is not None else None
    if not full:
        data.pop("traceback", None)
        data.pop("payload", None)
    return data
