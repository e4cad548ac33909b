"""The ``headwater`` command: parse options → Settings → the Python API → render events.

How a command ends (one line and a documented exit code, never a traceback unless ``--debug``)
is ``cli_guard``'s job; its docstring has the table of exit codes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from headwater.cli_guard import (
    Interrupted,
    existing_home,
    exit_for_uncaught,
    run_async,
    run_guarded,
    set_debug,
)
from headwater.config import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="Ingest documents and signals for AI systems: incremental, crash-safe, observable.",
)
ingest_app = typer.Typer(no_args_is_help=True, help="Run an ingestion once (batch).")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and replay the dead-letter queue.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(dlq_app, name="dlq")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="State folder \\[env HEADWATER_HOME; default ./.headwater]")
]
EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        help="hash:// | minilm:// | openai://MODEL | http://HOST/v1/embeddings?model=M&dimensions=N "
        "\\[env HEADWATER_EMBEDDER]",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait", help="If another process is writing the home, exit 4 at once instead of waiting"
    ),
]


def settings_from(*, rebuild: bool = False, **options: Any) -> Settings:
    return load_settings(rebuild=rebuild, **options)


def home_settings(**options: Any) -> Settings:
    """Settings of a command that reads an existing home (a missing one is a usage error)."""
    return existing_home(load_settings(**options))


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


@ingest_app.command("docs")
def ingest_docs(
    path: Annotated[
        str, typer.Argument(help="Folder to index (.md .markdown .txt .rst .pdf, recursive), or one file")
    ],
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    include: Annotated[list[str] | None, typer.Option(help="Glob to include (repeatable)")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob to exclude (repeatable)")] = None,
    chunk_size: Annotated[int | None, typer.Option(min=50, help="Chunk size in characters")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(min=0, help="Chunk overlap in characters")] = None,
    pii_scrub: Annotated[bool | None, typer.Option("--pii-scrub/--no-pii-scrub", help="Redact PII")] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, max=1024, help="Extraction processes (0 = one per core)")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Sizing profile: local | standard | high-throughput \\[env HEADWATER_PRESET]"),
    ] = None,
    json_out: JsonOpt = False,
    fail_on_error: Annotated[
        bool, typer.Option("--fail-on-error", help="Exit 1 if any document failed")
    ] = False,
    no_wait: NoWaitOpt = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Re-index this home with new chunking, PII, include/exclude settings or another "
            "embedder (it refuses them otherwise); queries keep working meanwhile",
        ),
    ] = False,
) -> None:
    """Index a folder incrementally: unchanged files are skipped, deleted ones removed."""
    from headwater.cli_render import Tally, render_events, summary_lines
    from headwater.compose import build_document_pipeline

    tally = Tally()

    def work() -> Any:
        settings = settings_from(
            home=home,
            embedder=embedder,
            include=include,
            exclude=exclude,
            chunk_size_chars=chunk_size,
            chunk_overlap_chars=chunk_overlap,
            pii_scrub=pii_scrub,
            workers=workers,
            preset=preset,
            wait_for_home=False if no_wait else None,
            rebuild=rebuild,
        )
        file = Path(path)
        if file.is_file():  # one file: indexed (or updated) as part of its folder, nothing else touched
            pipeline = build_document_pipeline(settings, str(file.parent), only=[file.name])
        else:
            pipeline = build_document_pipeline(settings, path)
        events = render_events(pipeline.stream_events(), json_lines=json_out, console=err, tally=tally)
        try:
            return run_async(events)
        except Interrupted as exc:
            raise Interrupted(exc.signum, tally.describe()) from None

    final = run_guarded(work)
    if not json_out:
        for line in summary_lines(final):
            out.print(line)
    if final.documents_failed:
        where = f" --home {home}" if home is not None else ""
        err.print(
            f"[yellow]{final.documents_failed} document(s) failed[/] and are in the dead-letter queue: "
            f"`headwater dlq list{where}` shows them"
        )
    if fail_on_error and final.documents_failed:
        raise typer.Exit(1)


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="What to search for")],
    k: Annotated[int, typer.Option("-k", min=1, max=10_000, help="How many hits")] = 5,
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search the index."""
    from headwater.ops.search import query as run_query

    hits = run_guarded(lambda: asyncio.run(run_query(home_settings(home=home, embedder=embedder), text, k)))
    if json_out:
        sys.stdout.write(json.dumps(hits, ensure_ascii=False) + "\n")
        return
    for i, hit in enumerate(hits, 1):
        snippet = " ".join(hit["text"].split())[:200]
        out.print(f"[bold]{i}.[/] {hit['uri']} [dim]{_where(hit)} score {hit['score']:.3f}[/]\n   {snippet}")


def _where(hit: dict[str, Any]) -> str:
    """A citation: the page of a PDF, else the characters of the file the chunk came from."""
    if hit.get("page"):
        pages = hit["page"] if hit["page"] == hit["page_end"] else f"{hit['page']}-{hit['page_end']}"
        return f"p. {pages}"
    if hit.get("source_start") is not None:
        return f"chars {hit['source_start']}-{hit['source_end']}"
    return f"@{hit['offset']}"


@app.command()
def status(home: HomeOpt = None, embedder: EmbedderOpt = None, json_out: JsonOpt = False) -> None:
    """Counts of documents, chunks, vectors and DLQ entries, and the index fingerprint."""
    from headwater.ops.index import status as run_status

    result = run_guarded(lambda: asyncio.run(run_status(home_settings(home=home, embedder=embedder))))
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    for key, value in result.items():
        out.print(f"{key}: {value}")


@app.command()
def verify(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    json_out: JsonOpt = False,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what disagrees, then verify again")] = False,
) -> None:
    """Check that metadata and the vector store agree (no lost, duplicate or orphan vectors)."""
    from headwater.ops.index import verify as run_verify

    before, after = run_guarded(
        lambda: run_async(run_verify(home_settings(home=home, embedder=embedder), repair=repair))
    )
    final = after or before
    if json_out:
        sys.stdout.write(
            json.dumps({"before": before.as_dict(), "after": after.as_dict() if after else None}) + "\n"
        )
    else:
        for name, report in (("found", before), ("after repair", after)):
            if report is None:
                continue
            out.print(f"{name}: " + ("ok" if report.ok else "DISAGREES"))
            for key, values in report.as_dict().items():
                if key != "ok" and values:
                    out.print(f"  {key}: {len(values)} e.g. {values[:3]}")
    if not final.ok:
        raise typer.Exit(1)


@app.command()
def optimize(home: HomeOpt = None, embedder: EmbedderOpt = None) -> None:
    """Compact the vector store and drop its old versions (ingest does it only for small tables)."""
    from headwater.ops.index import optimize as run_optimize

    run_guarded(lambda: run_async(run_optimize(home_settings(home=home, embedder=embedder))))
    out.print("optimized")


@app.command()
def export(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl)")] = "jsonl",
) -> None:
    """Print every chunk in the vector store, one JSON object a line."""
    from headwater.ops.index import export as run_export

    if fmt != "jsonl":
        err.print(f"[red]unsupported --format {fmt!r}[/]: only jsonl")
        raise typer.Exit(2)

    async def dump(settings: Settings) -> None:
        async for row in run_export(settings):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")

    run_guarded(lambda: asyncio.run(dump(home_settings(home=home, embedder=embedder))))


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


def _register_extensions() -> None:
    from headwater import cli_config, cli_ops, cli_signals, cli_stream

    cli_signals.register(app)
    cli_stream.register(app)
    cli_ops.register(app)
    cli_config.register(app)


def main() -> None:
    _register_extensions()
    try:
        app()
    except Exception as exc:  # noqa: BLE001 (what escaped a command's guard still gets one line)
        sys.exit(exit_for_uncaught(exc))


if __name__ == "__main__":
    main()
