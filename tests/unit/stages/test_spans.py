"""Source spans: every chunk's span in the decoded text normalizes to the chunk's text."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.stages.chunk import chunk_text
from headwater.stages.normalize import normalize_text, strip_repeated_edges, strip_repeated_edges_mapped
from headwater.stages.prepare import PrepareOptions, prepare_document
from headwater.stages.scrub import scrub_pii
from headwater.stages.spans import PageMap, SourceMap, span_of

# Text made of what the rewrites act on: CR/LF, trailing spaces, blank runs, controls, combining
# marks, the Unicode separators, PII-shaped strings.
_PIECES = st.sampled_from(
    ["word", "Café", "e\u0301", "\u1100\u1161", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n\n", "\x0c",
     "\x00", "\u2028", "\u2029", "a@b.io", "10.0.0.1", "x.", "\u0958", "漢字"]
)  # fmt: skip
_TEXT = st.lists(_PIECES, max_size=80).map("".join)
_CI = settings(derandomize=os.environ.get("CI") == "true", max_examples=300)


@_CI
@given(_TEXT)
def test_the_mapped_normalization_is_the_plain_one(raw: str) -> None:
    assert normalize_text(raw, SourceMap()) == normalize_text(raw)


@_CI
@given(_TEXT, st.integers(3, 40), st.booleans())
def test_every_span_normalizes_to_its_chunk(raw: str, size: int, scrub: bool) -> None:
    steps = SourceMap()
    text = normalize_text(raw, steps)
    if scrub:
        text, _ = scrub_pii(text, steps)
    chunks = chunk_text(
        "d", text, size=size, overlap=size // 4, config_key="k",
        locate=lambda start, end: span_of(start, end, steps, None),
    )  # fmt: skip
    for chunk in chunks:
        assert chunk.source_start is not None
        assert chunk.source_end is not None
        assert 0 <= chunk.source_start <= chunk.source_end <= len(raw)
        span = normalize_text(raw[chunk.source_start : chunk.source_end])
        if scrub or "\u1100" in raw or "\u0958" in raw:
            # A chunk that cuts a placeholder ("[EMA") spans the whole address (which scrubbed
            # alone may differ: "\b" sees no context); one that cuts a character NFC decomposes
            # (U+0958) spans the character; one inside a run of composed Hangul jamo, the run.
            text = normalize_text(chunk.text)
            assert text in span or text in scrub_pii(span)[0], (chunk, span)
        else:
            assert span == normalize_text(chunk.text), (chunk, span)


def test_a_span_points_into_the_file_not_the_normalized_text() -> None:
    raw = "Title   \r\n\r\n\r\n\r\nFirst paragraph.  \r\nSecond line.\r\n"
    steps = SourceMap()
    text = normalize_text(raw, steps)
    assert text == "Title\n\nFirst paragraph.\nSecond line."
    start = text.index("First")
    first, end, page, _ = span_of(start, len(text), steps, None)
    assert raw[first:end] == "First paragraph.  \r\nSecond line."
    assert page is None


def test_pdf_pages_map_back_through_the_header_and_footer_removal() -> None:
    names = ["one", "two", "three", "four"]
    pages = [
        f"ACME manual\n  Body of page {n}.\nMore text {n}\nPage {i} of 4\n" for i, n in enumerate(names, 1)
    ]
    cleaned, edges = strip_repeated_edges_mapped(pages)
    assert cleaned == strip_repeated_edges(pages)
    assert cleaned[0] == "  Body of page one.\nMore text one"
    steps = SourceMap()
    text = normalize_text("\n\n".join(cleaned), steps)
    where = PageMap(cleaned, edges)
    start = text.index("Body of page three")
    first, end, page, page_end = span_of(
        start, start + len("Body of page three.\nMore text three"), steps, where
    )
    assert (page, page_end) == (3, 3)
    assert pages[2][first:end] == "Body of page three.\nMore text three"
    start = text.index("More text one")
    first, end, page, page_end = span_of(start, text.index("page two.") + 9, steps, where)
    assert (page, page_end) == (1, 2)
    assert pages[0][first:].startswith("More text one\n")
    assert pages[1][:end] == "ACME manual\n  Body of page two."


def test_prepare_gives_every_chunk_its_span(tmp_path: object) -> None:
    raw = (
        "Line with trailing spaces   \r\n" * 40 + "\r\n\r\n\r\n" + "Next paragraph, café.\r\n" * 40
    ).encode()
    options = PrepareOptions(
        chunk_size_chars=200, chunk_overlap_chars=40, pii_scrub=False, pdf_max_pages=0, chunker_key="k"
    )
    prepared = prepare_document("d", "a.txt", raw, options)
    decoded = raw.decode()
    assert len(prepared.chunks) > 5
    for chunk in prepared.chunks:
        assert chunk.source_start is not None and chunk.source_end is not None
        assert normalize_text(decoded[chunk.source_start : chunk.source_end]) == normalize_text(chunk.text)
