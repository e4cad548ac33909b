"""Text clean-up before chunking: NFC, line endings, control characters, whitespace, and
headers/footers that repeat on most PDF pages. Chunk ``offset``s index this normalized text;
given a ``SourceMap``, each step records how its output maps back to its input (stages.spans),
so chunks also carry their span in the decoded file or the PDF page.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator

from headwater.stages.spans import OffsetMap, SourceMap, rewrite

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LINE_END = re.compile(r"\r\n?")
_SEPARATORS = re.compile(r"[\u2028\u2029]")
_DIGITS = re.compile(r"\d+")


def normalize_text(text: str, steps: SourceMap | None = None) -> str:
    """Each rewrite runs only when a substring search finds something for it to do: most text
    needs none of them, and ``[ \t]+\n`` tried a match at every space (a third of the CPU time
    of preparing a document went here). With ``steps``, the same rewrites record their maps."""
    if steps is not None:
        return _normalize_mapped(text, steps)
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def _normalize_mapped(text: str, steps: SourceMap) -> str:
    """``normalize_text`` as edits, the same output character for character."""

    def step(edits: Iterator[tuple[int, int, str]]) -> None:
        nonlocal text
        text, positions = rewrite(text, edits)
        steps.add(positions)

    if not unicodedata.is_normalized("NFC", text):
        step(_nfc_edits(text))
    if "\r" in text:
        step((m.start(), m.end(), "\n") for m in _LINE_END.finditer(text))
    if "\u2028" in text or "\u2029" in text:
        step(
            (m.start(), m.end(), "\n\n" if m.group() == "\u2029" else "\n")
            for m in _SEPARATORS.finditer(text)
        )
    if _CONTROL.search(text):
        step((m.start(), m.end(), "") for m in _CONTROL.finditer(text))
    if " \n" in text or "\t\n" in text:
        step((m.start(), m.end(), "\n") for m in _TRAILING_SPACE.finditer(text))
    if "\n\n\n" in text:
        step((m.start(), m.end(), "\n\n") for m in _BLANK_RUNS.finditer(text))
    stripped = text.strip()
    if len(stripped) != len(text):
        lead = len(text) - len(text.lstrip())
        step(iter([(0, lead, ""), (lead + len(stripped), len(text), "")]))
    return text


def _nfc_edits(text: str) -> Iterator[tuple[int, int, str]]:
    """NFC, line by line ("\n" never composes), and within a changed line by base character and
    its combining marks, so a span boundary lands on the right character. Where that per-cluster
    NFC differs from the line's (Hangul jamo compose across base characters), the part of the
    line between the first and the last change is one replacement: spans inside it cover it."""
    at = 0
    for line in text.split("\n"):
        composed = unicodedata.normalize("NFC", line)
        if composed != line:
            clusters = list(_clusters(line))
            pieces = [unicodedata.normalize("NFC", line[a:b]) for a, b in clusters]
            if "".join(pieces) == composed:
                for (a, b), piece in zip(clusters, pieces, strict=True):
                    if piece != line[a:b]:
                        yield at + a, at + b, piece
            else:
                head = _common_prefix(line, composed)
                tail = _common_prefix(line[head:][::-1], composed[head:][::-1])
                yield at + head, at + len(line) - tail, composed[head : len(composed) - tail]
        at += len(line) + 1


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _clusters(line: str) -> Iterator[tuple[int, int]]:
    start = 0
    for i in range(1, len(line) + 1):
        if i == len(line) or not unicodedata.combining(line[i]):
            yield start, i
            start = i


def _edge_lines(page: str, take: int) -> list[str]:
    lines = [line.strip() for line in page.strip().splitlines() if line.strip()]
    return lines[:take] + lines[-take:] if len(lines) > take else lines


def strip_repeated_edges(pages: list[str], *, min_pages: int = 3, share: float = 0.5) -> list[str]:
    return strip_repeated_edges_mapped(pages, min_pages=min_pages, share=share)[0]


def strip_repeated_edges_mapped(
    pages: list[str], *, min_pages: int = 3, share: float = 0.5
) -> tuple[list[str], list[OffsetMap | None]]:
    """Drop lines at the top or bottom of pages that repeat on more than ``share`` of them; with
    each cleaned page, the map back to the page's text (None: the page is unchanged).

    Page numbers differ page to page, so digits are masked before counting ("Page 3 of 9").
    """
    unchanged: list[OffsetMap | None] = [None] * len(pages)
    if len(pages) < min_pages:
        return pages, unchanged
    counts: Counter[str] = Counter()
    for page in pages:
        counts.update({_DIGITS.sub("#", line) for line in _edge_lines(page, 2)})
    repeated = {line for line, n in counts.items() if n > share * len(pages)}
    if not repeated:
        return pages, unchanged
    cleaned: list[str] = []
    maps: list[OffsetMap | None] = []
    for page in pages:
        text, positions = _without_edges(page, repeated)
        cleaned.append(text)
        maps.append(positions)
    return cleaned, maps


def _without_edges(page: str, repeated: set[str]) -> tuple[str, OffsetMap]:
    stripped = page.strip()
    lines = stripped.splitlines()
    ends = [len(line) for line in stripped.splitlines(keepends=True)]
    head = [i for i in range(min(2, len(lines))) if _DIGITS.sub("#", lines[i].strip()) in repeated]
    tail = [
        i
        for i in range(len(lines) - 2, len(lines))
        if i >= 0 and _DIGITS.sub("#", lines[i].strip()) in repeated
    ]
    drop = set(head) | set(tail)
    positions = OffsetMap()
    kept: list[str] = []
    at = len(page) - len(page.lstrip())  # where line i starts in the page
    out = 0
    previous_end = at
    for i, line in enumerate(lines):
        if i not in drop:
            if kept:
                positions.anchor(out, previous_end)  # the "\n" between kept lines: the line break
                out += 1
            positions.anchor(out, at)
            kept.append(line)
            out += len(line)
            previous_end = at + len(line)
        at += ends[i]
    return "\n".join(kept), positions
