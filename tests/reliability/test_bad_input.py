"""A corpus of hostile inputs: every good file is indexed, every bad one is a DLQ entry or a
skip with a reason, nothing outside the root is read, and the run ends normally."""

from __future__ import annotations

import codecs
import io
import json
import os
import random
from pathlib import Path

from pypdf import PdfWriter
from reportlab.pdfgen import canvas

from tests.conftest import Cli

SAMPLE_PDF = Path(__file__).resolve().parents[2] / "samples" / "docs" / "reference" / "operations.pdf"


def pdf_with_pages(n: int) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for i in range(n):
        c.drawString(72, 720, f"page {i}")
        c.showPage()
    c.save()
    return buf.getvalue()


def encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(SAMPLE_PDF.read_bytes()))
    writer.encrypt(user_password="secret", owner_password="owner")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def nested_pdf(depth: int) -> bytes:
    body = b"[" * depth + b"]" * depth
    return (
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R /Deep "
        + body
        + b" >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
        + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def build(root: Path, outside: Path) -> None:
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("TOP-SECRET-CANARY outside the root")
    good = {
        "good.md": "# Good\n\nA perfectly fine document.",
        "name with spaces ü.md": "unicode file name",
        "new\nline.md": "a newline in the file name",
        "long_line.txt": "word " * 400_000,  # one 2 MB line
        "empty.md": "",
    }
    for name, text in good.items():
        (root / name).write_text(text)
    (root / "utf16.md").write_bytes(codecs.BOM_UTF16_LE + "UTF-16 text with a BOM".encode("utf-16-le"))
    pdf = SAMPLE_PDF.read_bytes()
    bad = {
        "binary.md": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200),
        "invalid.md": b"valid start \xc3\x28 broken",
        "truncated.pdf": pdf[: len(pdf) // 2],
        "random.pdf": random.Random(1).randbytes(5000),
        "encrypted.pdf": encrypted_pdf(),
        "many_pages.pdf": pdf_with_pages(60),
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    (root / "nested.pdf").write_bytes(nested_pdf(200_000))
    os.symlink(outside / "secret.md", root / "escape.md")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root, root / "loop")
    os.mkfifo(root / "fifo.md")


def test_hostile_corpus(cli: Cli, tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    build(root, tmp_path / "outside")
    events = cli.json_lines(
        "ingest",
        "docs",
        str(root),
        "--home",
        str(home),
        "--json",
        env={"HEADWATER_PDF_MAX_PAGES": "50", "HEADWATER_EXTRACT_TIMEOUT_SECONDS": "60"},
    )
    final = events[-1]
    assert final["type"] == "RunCompleted"
    by_uri = {e["uri"]: e for e in events if "uri" in e}

    for name in ("good.md", "name with spaces ü.md", "new\nline.md", "long_line.txt", "utf16.md", "empty.md"):
        assert by_uri[name]["type"] == "DocumentCompleted", by_uri[name]
    assert by_uri["long_line.txt"]["chunks"] >= 2000
    assert by_uri["empty.md"]["chunks"] == 0

    expected_errors = {
        "binary.md": "binary data",
        "invalid.md": "invalid UTF-8 at byte 12",
        "truncated.pdf": "cannot open PDF",
        "random.pdf": "not a PDF",
        "encrypted.pdf": "encrypted",
        "many_pages.pdf": "60 pages is over the limit",
    }
    for name, message in expected_errors.items():
        event = by_uri[name]
        assert event["type"] == "DocumentFailed", event
        assert name in event["message"] and message in event["message"], event
        assert event["stage"] == "extract" and event["error_type"] == "InputError"
    assert by_uri["nested.pdf"]["type"] in {"DocumentFailed", "DocumentCompleted"}

    assert by_uri["escape.md"] == {
        **by_uri["escape.md"],
        "type": "DocumentSkipped",
        "reason": "symlink points outside the source root",
    }
    assert by_uri["fifo.md"]["reason"] == "not a regular file"

    letters = json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout)
    assert {lt["input_ref"] for lt in letters} >= set(expected_errors)
    assert final["documents_failed"] == len(letters)
    exported = cli("export", "--home", str(home)).stdout
    assert "TOP-SECRET-CANARY" not in exported
    assert cli("verify", "--home", str(home), check=False).returncode == 0
