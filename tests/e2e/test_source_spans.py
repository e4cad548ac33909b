"""Every exported chunk points into its source: ``file_text[source_start:source_end]``, normalized
as headwater normalizes, is the chunk's text; for a PDF, the same within its pages' extracted
text. Checked over a real corpus: the shipped samples, the documentation files of the installed
Python packages (READMEs, licences, changelogs with CRLF line ends, trailing spaces, tabs, odd
Unicode) and a PDF with a running header and footer on every page."""

from __future__ import annotations

import io
import json
import shutil
import sysconfig
from pathlib import Path

import pytest
from reportlab.pdfgen import canvas

from headwater.stages.extract import extract_pdf
from headwater.stages.normalize import normalize_text
from tests.conftest import Cli

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "docs"
REAL_FILES = 400


def _real_corpus(into: Path) -> int:
    """Copy the first REAL_FILES .md/.rst/.txt files under site-packages (sorted: the same files
    on every run of one environment); returns how many."""
    site = Path(sysconfig.get_paths()["purelib"])
    picked = 0
    for path in sorted(site.rglob("*")):
        if picked == REAL_FILES:
            break
        if path.suffix in {".md", ".rst", ".txt"} and path.is_file() and 200 < path.stat().st_size < 400_000:
            target = into / "site" / path.relative_to(site)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            picked += 1
    return picked


def _manual_pdf(pages: int) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for page in range(1, pages + 1):
        c.drawString(72, 800, "ACME Pump Controller - Operator's Manual")
        for line in range(30):
            text = f"Section {page}.{line}: check the valve   and log pressure {line * page}."
            c.drawString(72, 760 - 20 * line, text)
        c.drawString(72, 40, f"Page {page} of {pages}")
        c.showPage()
    c.save()
    return buf.getvalue()


@pytest.fixture
def real_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLES, corpus / "samples")
    assert _real_corpus(corpus) > 100
    (corpus / "manual.pdf").write_bytes(_manual_pdf(12))
    (corpus / "crlf.txt").write_bytes("Title  \r\n\r\n\r\n\r\nCafe\u0301 \tline\r\n".encode() * 300)
    return corpus


def _page_texts(path: Path) -> list[str]:
    return extract_pdf(path.name, path.read_bytes()).pages


def test_every_chunk_span_normalizes_to_the_chunk_text(cli: Cli, real_corpus: Path, tmp_path: Path) -> None:
    home = tmp_path / "h"
    sizes = ("--chunk-size", "400", "--chunk-overlap", "50")
    cli("ingest", "docs", str(real_corpus), "--home", str(home), *sizes)
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert len(rows) > 1000
    pages_of: dict[str, list[str]] = {}
    checked_pdf = spanning = 0
    for row in rows:
        assert row["source_start"] is not None and row["source_end"] is not None, row
        path = real_corpus / row["uri"]
        expected = normalize_text(row["text"])
        if path.suffix == ".pdf":
            pages = pages_of.setdefault(row["uri"], _page_texts(path))
            first, last = row["page"] - 1, row["page_end"] - 1
            checked_pdf += 1
            if first != last:  # across a page break (and the footer and header dropped there):
                spanning += 1  # it starts at source_start of the first page, ends at source_end of the last
                head = normalize_text(pages[first][row["source_start"] :])
                tail = normalize_text(pages[last][: row["source_end"]])
                assert head[:40] == expected[:40] and tail[-40:] == expected[-40:], row
                continue
            span = pages[first][row["source_start"] : row["source_end"]]
        else:
            assert row["page"] is None
            span = (path.read_bytes().decode("utf-8-sig"))[row["source_start"] : row["source_end"]]
        assert normalize_text(span) == expected, row
    assert checked_pdf > 12 and spanning > 0


def test_a_home_indexed_before_spans_gets_them_without_embedding_again(
    cli: Cli, corpus: Path, home: Path
) -> None:
    """A home from before source spans: its chunks are re-prepared once (same ids, no embedding)."""
    import asyncio

    cli("ingest", "docs", str(corpus), "--home", str(home))
    fingerprint = cli.status(home)["fingerprint"]
    asyncio.run(_forget_spans(home))
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert all(row["source_start"] is None for row in rows)

    again = cli.last_event("ingest", "docs", str(corpus), "--home", str(home))
    assert again["chunks_embedded"] == 0 and again["documents_failed"] == 0
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert all(row["source_start"] is not None for row in rows)
    assert cli.status(home)["fingerprint"] == fingerprint
    third = cli.last_event("ingest", "docs", str(corpus), "--home", str(home))
    assert third["documents_unchanged"] == third["documents_seen"]


async def _forget_spans(home: Path) -> None:
    """Make the home look like one written before spans: null span columns, no marker."""
    import sqlite3

    import lancedb

    table = lancedb.connect(str(home / "vectors")).open_table("chunks")
    table.drop_columns(["source_start", "source_end", "page", "page_end"])
    with sqlite3.connect(home / "state.db") as db:
        db.execute("DELETE FROM settings WHERE key LIKE 'source_spans:%'")
