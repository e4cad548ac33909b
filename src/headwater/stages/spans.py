"""Where a chunk came from in its source: positions in rewritten text → positions in the text it
was rewritten from.

Chunking runs on normalized text (NFC, LF line ends, no trailing spaces, no blank-line runs,
PDF headers and footers dropped, PII scrubbed), so a chunk's ``offset`` indexes that text, which
no user has. Citations and highlighting need the decoded file (or a PDF page's extracted text):
every rewrite step records an ``OffsetMap`` as it goes, and a chunk's span is its first and last
character mapped back through the steps, last step first. Nothing is recorded for a step that
changed nothing, so clean text costs only the substring checks it already did.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence


class OffsetMap:
    """A rewrite as anchors: from output position ``out[i]`` on, the output and the input advance
    together from input position ``src[i]`` (until the next anchor), except after an anchor that
    starts a replacement: all of it comes from the whole input it replaced."""

    __slots__ = ("_out", "_replaced", "_src")

    def __init__(self) -> None:
        self._out: list[int] = [0]
        self._src: list[int] = [0]
        self._replaced: list[bool] = [False]

    def anchor(self, out: int, src: int, *, replaced: bool = False) -> None:
        if self._out[-1] == out:
            self._src[-1], self._replaced[-1] = src, replaced
        else:
            self._out.append(out)
            self._src.append(src)
            self._replaced.append(replaced)

    def __call__(self, pos: int) -> int:
        """Where the character at output ``pos`` starts in the input."""
        i = bisect.bisect_right(self._out, pos) - 1
        return self._src[i] if self._replaced[i] else self._src[i] + (pos - self._out[i])

    def end(self, pos: int) -> int:
        """Where an output span ending (exclusive) at ``pos`` ends in the input."""
        i = bisect.bisect_right(self._out, max(pos - 1, 0)) - 1
        if self._replaced[i]:
            return self._src[i + 1]
        return self._src[i] + (pos - self._out[i])


def rewrite(text: str, edits: Iterable[tuple[int, int, str]]) -> tuple[str, OffsetMap]:
    """Apply ``(start, end, replacement)`` edits (in order, not overlapping) to ``text``.

    A replacement that ends the text it replaces maps onto that end (the "\\n" that replaces
    " \\t\\n" is the input's "\\n"); any other starts where the replaced text starts ("é" for
    "e" + U+0301, "[EMAIL]" for an address)."""
    parts: list[str] = []
    positions = OffsetMap()
    last = out = 0
    for start, end, replacement in edits:
        parts.append(text[last:start])
        out += start - last
        suffix = len(replacement) <= end - start and text.endswith(replacement, start, end)
        positions.anchor(out, end - len(replacement) if suffix else start, replaced=not suffix)
        parts.append(replacement)
        out += len(replacement)
        positions.anchor(out, end)
        last = end
    parts.append(text[last:])
    return "".join(parts), positions


class SourceMap:
    """The rewrite steps from a source text to the chunked text, in order."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps: list[OffsetMap] = []

    def add(self, step: OffsetMap) -> None:
        self.steps.append(step)

    def __call__(self, pos: int) -> int:
        for step in reversed(self.steps):
            pos = step(pos)
        return pos

    def end(self, pos: int) -> int:
        for step in reversed(self.steps):
            pos = step.end(pos)
        return pos


class PageMap:
    """Positions in PDF pages joined by "\\n\\n" → (page index, position in that page's extracted
    text), through the header/footer removal each page had (``edges``; None where none)."""

    __slots__ = ("_edges", "_lengths", "_starts")

    def __init__(self, cleaned: Sequence[str], edges: Sequence[OffsetMap | None]) -> None:
        self._starts: list[int] = []
        self._lengths = [len(page) for page in cleaned]
        self._edges = list(edges)
        at = 0
        for page in cleaned:
            self._starts.append(at)
            at += len(page) + 2

    def start(self, pos: int) -> tuple[int, int]:
        index = max(bisect.bisect_right(self._starts, pos) - 1, 0)
        within = min(pos - self._starts[index], self._lengths[index])  # in the "\n\n" after a page: its end
        edges = self._edges[index]
        return index, edges(within) if edges is not None else within

    def end(self, pos: int) -> tuple[int, int]:
        index = max(bisect.bisect_right(self._starts, max(pos - 1, 0)) - 1, 0)
        within = min(pos - self._starts[index], self._lengths[index])
        edges = self._edges[index]
        return index, edges.end(within) if edges is not None else within


def span_of(
    start: int, end: int, to_joined: SourceMap, pages: PageMap | None
) -> tuple[int, int, int | None, int | None]:
    """``[start, end)`` of the chunked text → ``(source_start, source_end, page, page_end)``.

    Pages count from 1; for a chunk that runs over a page break, ``source_start`` is in ``page``
    and ``source_end`` in ``page_end``.
    """
    first, stop = to_joined(start), to_joined.end(end)
    if pages is None:
        return first, stop, None, None
    page, first = pages.start(first)
    page_end, stop = pages.end(stop)
    return first, stop, page + 1, page_end + 1
