"""The documents commands: ``ingest docs``, ``query``, ``status``, ``verify``, ``optimize`` and
``export``. Each parses its options → Settings → the Python API (``compose``, ``ops``) → renders.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from headwater.cli.app import app, err, ingest_app, out
from headwater.cli.guard import Interrupted, run_async, run_guarded
from headwater.cli.options import (
    ComputeOpt,
    EmbedderOpt,
    HomeOpt,
    JsonOpt,
    MetadataStoreOpt,
    NoWaitOpt,
    VectorStoreOpt,
    home_settings,
    settings_from,
)
from headwater.config import Settings

if TYPE_CHECKING:
    from headwater.pipeline.document_spark import SparkDocumentPipeline
    from headwater.pipeline.documents import DocumentPipeline


@ingest_app.command("docs")
def ingest_docs(
    path: Annotated[
        str,
        typer.Argument(
            help="Folder to index (.md .markdown .txt .rst .pdf .html, recursive), one file, a bucket "
            "(s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX), or web pages: "
            "https://HOST/sitemap.xml, https://HOST/urls.txt, urls+file:///PATH/urls.txt"
        ),
    ],
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
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
    compute: ComputeOpt = None,
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
    """Index a folder, bucket or site incrementally: unchanged documents are skipped, deleted ones removed."""
    from headwater.cli.render import Tally, render_events, summary_lines
    from headwater.compose import build_document_backfill, build_document_pipeline

    tally = Tally()

    def work() -> Any:
        settings = settings_from(
            home=home,
            embedder=embedder,
            vector_store=vector_store,
            metadata_store=metadata_store,
            include=include,
            exclude=exclude,
            chunk_size_chars=chunk_size,
            chunk_overlap_chars=chunk_overlap,
            pii_scrub=pii_scrub,
            workers=workers,
            preset=preset,
            wait_for_home=False if no_wait else None,
            rebuild=rebuild,
            compute=compute,
        )
        file = Path(path)
        pipeline: DocumentPipeline | SparkDocumentPipeline
        if file.is_file():  # one file: indexed (or updated) as part of its folder, nothing else touched
            pipeline = build_document_pipeline(settings, str(file.parent), only=[file.name])
        else:
            pipeline = build_document_backfill(settings, path)
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
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search the index."""
    from headwater.ops.search import query as run_query

    hits = run_guarded(
        lambda: asyncio.run(run_query(_reading(home, embedder, vector_store, metadata_store), text, k))
    )
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
def status(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Counts of documents, chunks, vectors and DLQ entries, and the index fingerprint."""
    from headwater.ops.index import status as run_status

    result = run_guarded(
        lambda: asyncio.run(run_status(_reading(home, embedder, vector_store, metadata_store)))
    )
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    for key, value in result.items():
        out.print(f"{key}: {value}")


@app.command()
def verify(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
    json_out: JsonOpt = False,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what disagrees, then verify again")] = False,
) -> None:
    """Check that metadata and the vector store agree (no lost, duplicate or orphan vectors)."""
    from headwater.ops.index import verify as run_verify

    before, after = run_guarded(
        lambda: run_async(run_verify(_reading(home, embedder, vector_store, metadata_store), repair=repair))
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
def optimize(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
) -> None:
    """Compact the vector store and drop its old versions (ingest does it only for small tables)."""
    from headwater.ops.index import optimize as run_optimize

    run_guarded(lambda: run_async(run_optimize(_reading(home, embedder, vector_store, metadata_store))))
    out.print("optimized")


@app.command()
def export(
    home: HomeOpt = None,
    embedder: EmbedderOpt = None,
    vector_store: VectorStoreOpt = None,
    metadata_store: MetadataStoreOpt = None,
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

    run_guarded(lambda: asyncio.run(dump(_reading(home, embedder, vector_store, metadata_store))))


def _reading(
    home: Path | None, embedder: str | None, vector_store: str | None, metadata_store: str | None
) -> Settings:
    """Settings of a command that reads a home's index, with the stores asked for on its command line."""
    return home_settings(
        home=home, embedder=embedder, vector_store=vector_store, metadata_store=metadata_store
    )
