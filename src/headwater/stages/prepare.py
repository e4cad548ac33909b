"""One document's bytes → normalized text → chunks: the CPU-heavy step, run in worker processes.

A plain top-level function of picklable arguments, so a process pool (or Spark) can run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headwater.stages.chunk import TextChunk, chunk_text
from headwater.stages.extract import extract
from headwater.stages.normalize import normalize_text, strip_repeated_edges
from headwater.stages.scrub import scrub_pii


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    chunk_size_chars: int
    chunk_overlap_chars: int
    pii_scrub: bool
    pdf_max_pages: int
    chunker_key: str


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    doc_id: str
    chunks: list[TextChunk]
    text_chars: int
    redactions: dict[str, int] = field(default_factory=dict)


def prepare_document(doc_id: str, relpath: str, data: bytes, options: PrepareOptions) -> PreparedDocument:
    extracted = extract(relpath, data, pdf_max_pages=options.pdf_max_pages)
    text = extracted.text
    if extracted.pages:
        text = "\n\n".join(strip_repeated_edges(extracted.pages))
    text = normalize_text(text)
    redactions: dict[str, int] = {}
    if options.pii_scrub:
        text, counts = scrub_pii(text)
        redactions = dict(counts)
    chunks = chunk_text(
        doc_id,
        text,
        size=options.chunk_size_chars,
        overlap=options.chunk_overlap_chars,
        config_key=options.chunker_key,
    )
    return PreparedDocument(doc_id=doc_id, chunks=chunks, text_chars=len(text), redactions=redactions)
