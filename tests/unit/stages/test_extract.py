import codecs

import pytest

from headwater.errors import InputError
from headwater.stages.extract import decode_text, extract, suffix_of


def test_utf8_text_is_decoded() -> None:
    assert extract("a.md", "héllo".encode()).text == "héllo"


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
    ],
)
def test_bom_selects_the_encoding_and_is_removed(bom: bytes, encoding: str) -> None:
    result = decode_text("a.txt", bom + "Grüße".encode(encoding))
    assert result.text == "Grüße"
    assert result.encoding == encoding


def test_invalid_utf8_names_the_file_and_byte_offset() -> None:
    with pytest.raises(InputError, match=r"notes/a\.md: invalid UTF-8 at byte 3 \(0xff\)"):
        extract("notes/a.md", b"abc\xffdef")


def test_binary_data_in_a_markdown_file_is_rejected() -> None:
    with pytest.raises(InputError, match="binary data"):
        extract("x.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00")


def test_unsupported_suffix() -> None:
    with pytest.raises(InputError, match=r"unsupported file type '\.exe'"):
        extract("a.exe", b"MZ")


def test_pdf_text_and_pages(sample_pdf: bytes) -> None:
    result = extract("ops.pdf", sample_pdf)
    assert len(result.pages) == 3
    assert "Dead-letter queue" in result.pages[1]


def test_random_bytes_named_pdf_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not a PDF"):
        extract("r.pdf", bytes(range(256)) * 4)


def test_truncated_pdf_is_an_input_error(sample_pdf: bytes) -> None:
    with pytest.raises(InputError, match="cannot open PDF"):
        extract("t.pdf", sample_pdf[: len(sample_pdf) // 3])


def test_page_limit(sample_pdf: bytes) -> None:
    with pytest.raises(InputError, match=r"3 pages is over the limit of 2 pages"):
        extract("big.pdf", sample_pdf, pdf_max_pages=2)


def test_suffix_of() -> None:
    assert suffix_of("a/b/C.MD") == ".md"
    assert suffix_of("README") == ""


def test_unpaired_surrogates_from_pdfium_become_replacement_characters() -> None:
    """A broken font map can make PDFium's UTF-16 hold half a surrogate pair: no codec encodes
    that, so chunk hashing (and an embedder's request) failed on such a page."""
    from headwater.stages.extract import well_formed

    assert well_formed("plain text") == "plain text"
    assert well_formed("a\ud83d\ude00b") == "a\U0001f600b"  # a pair: its character
    fixed = well_formed("lone \ud800 half \udfff end")
    assert fixed == "lone \ufffd half \ufffd end"
    fixed.encode("utf-8")  # encodable now
