from headwater.stages.normalize import normalize_text, strip_repeated_edges


def test_nfc_line_endings_controls_and_blank_runs() -> None:
    raw = "Cafe\u0301\r\nline  \r\n\r\n\r\n\r\nnext\x07\x00 end"
    assert normalize_text(raw) == "Café\nline\n\nnext end"


def test_tabs_and_inner_spaces_survive() -> None:
    assert normalize_text("a\tb  c") == "a\tb  c"


def test_repeated_headers_and_page_numbers_are_removed() -> None:
    bodies = ["Alpha intro\nalpha end", "Beta start\nbeta end", "Gamma start\ngamma end", "Delta\ndelta end"]
    pages = [f"ACME manual\n{body}\nPage {i} of 4" for i, body in enumerate(bodies, 1)]
    assert strip_repeated_edges(pages) == bodies


def test_short_documents_are_left_alone() -> None:
    pages = ["Header\nA", "Header\nB"]
    assert strip_repeated_edges(pages) == pages
