"""Normalized text → chunks with exact character offsets, through semchunk (a maintained
splitter that returns offsets; ~16 MB/s here). Sizes are in characters.

Chunk identity: ``chunk_hash`` is the sha256 of the chunk text, and ``n`` counts earlier chunks
of the same document with the same hash, so repeated boilerplate never collides while inserting
text elsewhere in a document leaves the other chunks' ids unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import msgspec

from headwater.models import CHUNKER_VERSION, make_chunk_id, sha256_hex


class TextChunk(msgspec.Struct, frozen=True):
    """A Struct, not a dataclass: every chunk crosses a process boundary, and a dataclass
    unpickles ~10x slower (the main process unpickled every chunk of a cold run)."""

    chunk_id: str
    chunk_hash: str
    offset: int
    length: int
    text: str
    source_start: int | None = None
    source_end: int | None = None
    page: int | None = None
    page_end: int | None = None


def chunker_key(size: int, overlap: int, pii_scrub: bool) -> str:
    """Everything that changes chunk text; part of every chunk id."""
    return f"v{CHUNKER_VERSION}:semchunk:{size}:{overlap}:pii={int(pii_scrub)}"


def split_text(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) spans; each text[start:end] is one chunk of at most ``size`` characters.

    semchunk splits at semantic boundaries into pieces of ``size - overlap``; each piece after
    the first then reaches back up to ``overlap`` characters, starting on a word boundary.
    (semchunk's own overlap can overshoot the size by a few percent.)
    """
    import semchunk

    if not text.strip():
        return []
    if len(text) <= size:
        return [(0, len(text))]
    stride = max(size - overlap, 1)
    _, spans = semchunk.chunk(text, stride, len, offsets=True, memoize=False)  # type: ignore[attr-defined]
    result: list[tuple[int, int]] = []
    for span in spans:
        start, end = int(span[0]), int(span[1])
        reach = max(start - overlap, 0)
        if reach < start:
            gap = text.find(" ", reach, start)
            reach = gap + 1 if gap != -1 else start
        result.append((reach, end))
    return result


Locate = Callable[[int, int], tuple[int, int, int | None, int | None]]
"""[start, end) of the chunked text → (source_start, source_end, page, page_end): stages.spans."""


def chunk_text(
    doc_id: str, text: str, *, size: int, overlap: int, config_key: str, locate: Locate | None = None
) -> list[TextChunk]:
    seen: Counter[str] = Counter()
    chunks = []
    for start, end in split_text(text, size, overlap):
        piece = text[start:end]
        chunk_hash = sha256_hex(piece)
        n = seen[chunk_hash]
        seen[chunk_hash] += 1
        source_start, source_end, page, page_end = locate(start, end) if locate else (None, None, None, None)
        chunks.append(
            TextChunk(
                chunk_id=make_chunk_id(doc_id, chunk_hash, n, config_key),
                chunk_hash=chunk_hash,
                offset=start,
                length=end - start,
                text=piece,
                source_start=source_start,
                source_end=source_end,
                page=page,
                page_end=page_end,
            )
        )
    return chunks
