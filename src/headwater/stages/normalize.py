"""Text clean-up before chunking: NFC, line endings, control characters, whitespace, and
headers/footers that repeat on most PDF pages. Offsets of chunks refer to this normalized text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_DIGITS = re.compile(r"\d+")


def normalize_text(text: str) -> str:
    """Each rewrite runs only when a substring search finds something for it to do: most text
    needs none of them, and ``[ \t]+\n`` tried a match at every space (a third of the CPU time
    of preparing a document went here)."""
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


def _edge_lines(page: str, take: int) -> list[str]:
    lines = [line.strip() for line in page.strip().splitlines() if line.strip()]
    return lines[:take] + lines[-take:] if len(lines) > take else lines


def strip_repeated_edges(pages: list[str], *, min_pages: int = 3, share: float = 0.5) -> list[str]:
    """Drop lines at the top or bottom of pages that repeat on more than ``share`` of them.

    Page numbers differ page to page, so digits are masked before counting ("Page 3 of 9").
    """
    if len(pages) < min_pages:
        return pages
    counts: Counter[str] = Counter()
    for page in pages:
        counts.update({_DIGITS.sub("#", line) for line in _edge_lines(page, 2)})
    repeated = {line for line, n in counts.items() if n > share * len(pages)}
    if not repeated:
        return pages
    cleaned = []
    for page in pages:
        lines = page.strip().splitlines()
        head = [i for i in range(min(2, len(lines))) if _DIGITS.sub("#", lines[i].strip()) in repeated]
        tail = [
            i
            for i in range(max(0, len(lines) - 2), len(lines))
            if _DIGITS.sub("#", lines[i].strip()) in repeated
        ]
        drop = set(head) | set(tail)
        cleaned.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return cleaned
