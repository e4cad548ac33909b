"""HTML → text: what a reader sees, deterministic; and the suffixes that pick it."""

from __future__ import annotations

import pytest

from headwater.errors import InputError
from headwater.stages.extract import extract
from headwater.stages.html import html_to_text

PAGE = b"""<!doctype html><html><head><title>Ignored when there is an h1</title>
<style>body { color: red }</style><script>var secret = 1;</script></head>
<body><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<h1>Caf&eacute; &amp; tea</h1>
<p>First   paragraph,
   over lines.<br>After a break.</p>
<noscript>enable JavaScript</noscript>
<h2>List</h2><ul><li>one</li><li>two <b>bold</b></li></ul>
<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
<pre>  keep
    this</pre><!-- a comment --><template><p>never shown</p></template>
</body></html>"""


def test_blocks_headings_and_breaks_are_kept_and_noise_dropped() -> None:
    assert html_to_text("p.html", PAGE) == (
        "# Café & tea\n\n"
        "First paragraph, over lines.\nAfter a break.\n\n"
        "## List\n\n- one\n\n- two bold\n\n"
        "k | v\n\na | 1\n\n"
        "keep\n    this"
    )


def test_the_same_bytes_give_the_same_text_and_extract_picks_html_by_suffix() -> None:
    assert html_to_text("p.html", PAGE) == html_to_text("p.html", PAGE)
    for name in ("a/p.html", "p.HTM", "x.xhtml"):
        extracted = extract(name, PAGE)
        assert extracted.text.startswith("# Café & tea") and extracted.encoding == "html"
    assert extract("p.txt", b"<p>raw</p>").text == "<p>raw</p>"  # text stays text


def test_the_title_opens_a_page_without_h1() -> None:
    assert html_to_text("t.html", b"<title>The  title</title><p>body</p>") == "# The title\n\nbody"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('<meta charset="iso-8859-1"><p>caf\xe9</p>'.encode("latin-1"), "café"),
        (b"\xef\xbb\xbf<p>bom</p>", "bom"),
        ("<p>é</p>".encode("utf-16"), "é"),
    ],
)
def test_encodings_come_from_the_bom_or_the_meta_charset(data: bytes, expected: str) -> None:
    assert html_to_text("e.html", data) == expected


def test_invalid_utf8_is_an_input_error_with_its_offset() -> None:
    with pytest.raises(InputError, match=r"bad\.html: invalid utf-8 at byte 3"):
        html_to_text("bad.html", b"<p>\xff</p>")


def test_empty_and_deeply_nested_pages() -> None:
    assert html_to_text("e.html", b"") == ""
    assert html_to_text("d.html", b"<div>" * 3000 + b"deep" + b"</div>" * 3000) == "deep"
