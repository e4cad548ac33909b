"""PDF extraction is bounded by memory and text size, not by a page count that rejects real books."""

from __future__ import annotations

import resource
import time

import pytest
from tests.hostile_pdfs import book, form_bomb, inflating_bomb, page_text

from headwater.errors import InputError
from headwater.stages import extract as extract_module
from headwater.stages.extract import extract


def test_a_10000_page_pdf_is_extracted_whole_with_the_defaults() -> None:
    data = book(10_000)
    started = time.perf_counter()
    result = extract("manual.pdf", data)
    elapsed = time.perf_counter() - started
    assert len(result.pages) == 10_000
    assert all(page_text(i) in page for i, page in enumerate(result.pages))
    assert result.text == "\n\n".join(result.pages)
    assert elapsed < 30, elapsed  # ~1 s here


def test_the_page_limit_still_applies_when_set(sample_pdf: bytes) -> None:
    with pytest.raises(InputError, match=r"3 pages is over the limit of 2 pages") as caught:
        extract("big.pdf", sample_pdf, pdf_max_pages=2)
    assert caught.value.field == "pages"


@pytest.mark.parametrize("isolated", [True, False], ids=["child", "in-place"])
def test_errors_are_the_same_in_a_child_and_in_place(
    sample_pdf: bytes, isolated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_module, "_isolation_is_safe", lambda: isolated)
    assert "Dead-letter queue" in extract("ops.pdf", sample_pdf).pages[1]
    with pytest.raises(InputError, match=r"t\.pdf: cannot open PDF"):
        extract("t.pdf", sample_pdf[: len(sample_pdf) // 3])
    with pytest.raises(InputError, match=r"over 0 MiB of text \(at page 1 of 3\)"):
        extract("ops.pdf", sample_pdf, pdf_max_text_bytes=10)


@pytest.mark.parametrize(
    ("name", "bomb"),
    [("inflating.pdf", lambda: inflating_bomb(1)), ("forms.pdf", form_bomb)],
)
def test_a_pdf_bomb_is_stopped_by_the_memory_bound(name: str, bomb: object) -> None:
    """Each of these would take 15 GB or more; the extractor may add 256 MiB here."""
    assert callable(bomb)
    data = bomb()
    assert len(data) < 4_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, a high-water mark
    started = time.perf_counter()
    with pytest.raises(
        InputError, match=rf"{name}: PDF extraction needed more than its memory limit of 256 MiB"
    ):
        extract(name, data, pdf_max_memory_bytes=256 * 1024 * 1024)
    assert time.perf_counter() - started < 30
    # This process did not grow: the child alone carried the bomb. (The peak of the whole test
    # session may already be higher than the bomb's limit: only a rise past it counts.)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_after - peak_before < 256 * 1024
