"""One document's bytes → normalized text → chunks: the CPU-heavy step, run in worker processes.

A plain top-level function of picklable arguments, so a process pool (or Spark) can run it.
"""

from __future__ import annotations

import traceback

import msgspec

from headwater.errors import InputError
from headwater.stages.chunk import TextChunk, chunk_text
from headwater.stages.extract import extract
from headwater.stages.normalize import normalize_text, strip_repeated_edges_mapped
from headwater.stages.scrub import scrub_pii
from headwater.stages.spans import PageMap, SourceMap, span_of


class PrepareOptions(msgspec.Struct, frozen=True):
    chunk_size_chars: int
    chunk_overlap_chars: int
    pii_scrub: bool
    pdf_max_pages: int
    chunker_key: str


class PreparedDocument(msgspec.Struct, frozen=True):
    doc_id: str
    chunks: list[TextChunk]
    text_chars: int
    redactions: dict[str, int] = {}


def prepare_document(doc_id: str, relpath: str, data: bytes, options: PrepareOptions) -> PreparedDocument:
    extracted = extract(relpath, data, pdf_max_pages=options.pdf_max_pages)
    text = extracted.text
    pages = None
    if extracted.pages:
        cleaned, edges = strip_repeated_edges_mapped(extracted.pages)
        pages = PageMap(cleaned, edges)
        text = "\n\n".join(cleaned)
    steps = SourceMap()
    text = normalize_text(text, steps)
    redactions: dict[str, int] = {}
    if options.pii_scrub:
        text, counts = scrub_pii(text, steps)
        redactions = dict(counts)
    chunks = chunk_text(
        doc_id,
        text,
        size=options.chunk_size_chars,
        overlap=options.chunk_overlap_chars,
        config_key=options.chunker_key,
        locate=lambda start, end: span_of(start, end, steps, pages),
    )
    return PreparedDocument(doc_id=doc_id, chunks=chunks, text_chars=len(text), redactions=redactions)


class PrepareFailure(msgspec.Struct, frozen=True):
    """A document that could not be prepared, as a value: one bad file never fails its batch."""

    error_type: str
    message: str
    traceback: str
    bad_input: bool  # InputError: dead-letter for good; otherwise a bug or resource problem


def prepare_documents(
    items: list[tuple[str, str, bytes]], options: PrepareOptions
) -> list[PreparedDocument | PrepareFailure]:
    """Prepare (doc_id, relpath, data) items in one call: one round trip to a worker process."""
    results: list[PreparedDocument | PrepareFailure] = []
    for doc_id, relpath, data in items:
        try:
            results.append(prepare_document(doc_id, relpath, data, options))
        except Exception as exc:  # noqa: BLE001 - per-item failures are values
            results.append(
                PrepareFailure(
                    error_type=type(exc).__name__,
                    message=str(exc) or repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                    bad_input=isinstance(exc, InputError),
                )
            )
    return results
