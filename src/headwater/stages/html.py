"""HTML bytes → plain text (selectolax's Lexbor parser): what a reader of the page sees.

Deterministic and pure. Dropped whole: ``script style noscript template nav svg iframe object
embed canvas head`` (and so the menu and code a page carries around its text). Kept: headings as
``#``-prefixed paragraphs (``##`` for ``h2`` …), paragraphs and other blocks separated by a blank
line, ``<br>`` as a line break, list items as ``- `` lines, table cells separated by `` | ``,
``<pre>`` verbatim; other whitespace collapses to one space. Entities are unescaped by the
parser. The ``<title>`` opens the text when the body has no ``h1``.

Decoding: a byte-order mark, else the ``<meta charset>`` (or ``http-equiv`` content type) within
the first 2 KiB, else strict UTF-8 (an invalid byte is reported with its offset, as for text
files). The HTTP ``Content-Type`` charset is not seen here (the stage gets the bytes alone).
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from headwater.errors import InputError

HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
_DROP = frozenset(
    {"script", "style", "noscript", "template", "nav", "svg", "iframe", "object", "embed", "canvas", "head"}
)
_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre",
        "ul", "ol", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "caption", "figure",
        "figcaption", "hr", "form", "fieldset", "address", "details", "summary", "body", "html",
    }
)  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_CELLS = frozenset({"td", "th"})
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_BREAK, _LINE = "\x00break", "\x00line"
_END = object()
_EMPTY_HEADING = re.compile(r"#{1,6} ?")


def decode_html(relpath: str, data: bytes) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode(relpath, data[len(bom) :], encoding)
    if (found := _META_CHARSET.search(data[:2048])) is not None:
        name = found.group(1).decode("ascii").lower()
        try:
            encoding = codecs.lookup(name).name
        except LookupError:
            msg = f"{relpath}: unknown charset {name!r} in <meta>"
            raise InputError(msg, field="content") from None
        return _decode(relpath, data, encoding)
    return _decode(relpath, data, "utf-8")


def _decode(relpath: str, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        msg = f"{relpath}: invalid {encoding} at byte {exc.start}: {exc.reason}"
        raise InputError(msg, field="content") from exc


def html_to_text(relpath: str, data: bytes) -> str:
    from selectolax.lexbor import LexborHTMLParser  # lazily: only HTML documents need it

    tree = LexborHTMLParser(decode_html(relpath, data))
    root = tree.body or tree.root
    if root is None:
        return ""
    parts: list[str | tuple[str]] = []
    if tree.css_first("h1") is None and (title := tree.css_first("title")) is not None:
        heading = _SPACES.sub(" ", title.text(deep=True)).strip()
        if heading:
            parts += ["# " + heading, _BREAK]
    _walk(root, parts)
    return _join(parts)


def _walk(root: Any, parts: list[str | tuple[str]]) -> None:
    """Depth first with an explicit stack (a page nested 100,000 deep must not hit the recursion
    limit); an ``_END`` marker closes a block. Text inside ``<pre>`` comes as a 1-tuple: kept."""
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, in_pre = stack.pop()
        if node is _END:
            parts.append(_BREAK)
            continue
        tag = node.tag
        if tag == "-text":
            text = node.text_content or ""
            parts.append((text,) if in_pre else _SPACES.sub(" ", text))
            continue
        if tag in _DROP or tag.startswith(("-", "!")):  # comments, doctype
            continue
        if tag == "br":
            parts.append(_LINE)
            continue
        if tag in _BLOCKS or tag in _HEADINGS or tag == "li":
            parts.append(_BREAK)
            stack.append((_END, in_pre))
            if tag in _HEADINGS:
                parts.append("#" * _HEADINGS[tag] + " ")
            elif tag == "li":
                parts.append("- ")
        elif tag in _CELLS:
            parts.append(" | ")
        inner = in_pre or tag == "pre"
        stack.extend((child, inner) for child in reversed(list(node.iter(include_text=True))))


def _join(parts: list[str | tuple[str]]) -> str:
    """Blocks → paragraphs separated by one blank line; ``<br>`` → a newline; spaces that markup
    left at the start and end of a line go (``<pre>`` text is kept as it is)."""
    paragraphs: list[str] = []
    current: list[str] = []
    for part in [*parts, _BREAK]:
        if part is _BREAK:
            block = "".join(current).strip("\n ")
            if block and block not in ("-", "|") and not _EMPTY_HEADING.fullmatch(block):
                paragraphs.append(block)
            current.clear()
        elif part is _LINE:
            if current:
                current[-1] = current[-1].rstrip(" ")
            current.append("\n")
        elif isinstance(part, tuple):
            current.append(part[0])
        else:
            at_line_start = not current or current[-1].endswith("\n")
            text = part.lstrip(" ") if at_line_start else part
            if part == " | " and at_line_start:
                text = ""
            if text:
                if text.startswith(" ") and current and current[-1].endswith(" "):
                    text = text[1:]
                current.append(text)
    return "\n\n".join(paragraphs)
