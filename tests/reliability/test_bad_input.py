"""A corpus of hostile inputs: every good file is indexed, every bad one is a DLQ entry or a
skip with a reason, nothing outside the root is read, and the run ends normally."""

from __future__ import annotations

import codecs
import ctypes
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from pypdf import PdfWriter
from reportlab.pdfgen import canvas

from headwater import load_settings
from headwater.adapters.files import FileSource
from headwater.compose import build_document_pipeline
from headwater.errors import InputError
from headwater.events import DocumentCompleted, DocumentFailed
from headwater.models import SourceEntry
from tests import hostile_pdfs
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


# -- the folder walk (issue #13) ------------------------------------------------------------------

GOOD_WALK = {  # on-disk name -> identity; every one must be indexed
    b"good.md": "good.md",
    b"deep/er/fine.md": "deep/er/fine.md",
    b"back\\slash.md": "back%5Cslash.md",
    unicodedata.normalize("NFD", "café.md").encode(): "café.md",
    b"latin1 \xe9t\xe9.md": "latin1 %E9t%E9.md",
    b"dir\xff/inside.md": "dir%FF/inside.md",
}


def drop_file_permission_overrides() -> None:
    """Root, minus the capabilities that let it read any file (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, dropped from the bounding set, so the CLI started next has neither): a
    mode 000 file is unreadable again, while the interpreter under /root stays reachable (a
    setuid to 'nobody' could not even start it there)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def build_walk(root: Path) -> None:
    for disk, identity in GOOD_WALK.items():
        path = os.path.join(os.fsencode(root), disk)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(f"# A document\n\nKnown as {identity}.\n".encode())
    os.symlink("loop_b", root / "loop_a")  # two links pointing at each other, at the root
    os.symlink("loop_a", root / "loop_b")
    os.symlink("y.md", root / "deep" / "er" / "x.md")  # and deeper
    os.symlink("x.md", root / "deep" / "er" / "y.md")
    os.symlink("..", root / "deep" / "er" / "up")  # a folder link to its own parent
    os.symlink(root / "nowhere.md", root / "dangling.md")
    os.symlink("/etc", root / "escape")
    os.mkfifo(root / "fifo.md")
    (root / "locked.md").write_text("nobody may read this")
    (root / "locked.md").chmod(0)


def test_a_hostile_folder_walk_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    """Every good file is indexed, the run exits 0 with no traceback, the bad entries are skipped
    with a reason or dead-lettered by name, and a second run changes nothing."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    build_walk(root)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket.md"))

    def ingest() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "headwater.cli",
                "ingest",
                "docs",
                str(root),
                "--home",
                str(home),
                "--json",
            ],
            capture_output=True,
            text=True,
            env=cli.env,
            timeout=180,
            check=False,
            preexec_fn=drop_file_permission_overrides if os.geteuid() == 0 else None,
        )

    try:
        first = ingest()
        assert first.returncode == 0, first.stderr
        assert "Traceback" not in first.stderr + first.stdout
        events = [json.loads(line) for line in first.stdout.splitlines() if line.strip()]
        by_uri = {e["uri"]: e for e in events if "uri" in e}
        for identity in GOOD_WALK.values():
            assert by_uri[identity]["type"] == "DocumentCompleted", (identity, by_uri.get(identity))
            assert by_uri[identity]["chunks"] == 1
        skipped = {
            "loop_a": "broken or looping symlink",
            "loop_b": "broken or looping symlink",
            "deep/er/x.md": "broken or looping symlink",
            "deep/er/y.md": "broken or looping symlink",
            "deep/er/up": "symlink loop",
            "dangling.md": "broken or looping symlink",
            "escape": "symlink points outside the source root",
            "fifo.md": "not a regular file",
            "socket.md": "not a regular file",
        }
        for uri, reason in skipped.items():
            assert by_uri[uri]["type"] == "DocumentSkipped" and by_uri[uri]["reason"].startswith(reason), uri
        locked = by_uri["locked.md"]  # root without its overrides, or any other user: unreadable
        assert locked["type"] == "DocumentFailed", locked
        assert locked["message"] == "locked.md: cannot read: Permission denied" and locked["stage"] == "read"
        status = cli.status(home)
        assert status["documents_done"] == len(GOOD_WALK)
        assert status["chunks"] == status["vectors"] == len(GOOD_WALK)
        assert status["dlq"] == 1

        second = ingest()
        assert second.returncode == 0 and "Traceback" not in second.stderr + second.stdout
        final = json.loads(second.stdout.splitlines()[-1])
        assert final["type"] == "RunCompleted"
        assert final["documents_unchanged"] == len(GOOD_WALK)
        assert final["documents_added"] == final["documents_updated"] == final["documents_deleted"] == 0
        assert final["documents_failed"] == final["chunks_embedded"] == 0
        assert cli.status(home) == status
    finally:
        sock.close()


async def test_a_file_removed_between_listing_and_reading_is_dead_lettered_by_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("a.md", "vanishing.md", "z.md"):
        (root / name).write_text(f"# {name}\n\nsome text")

    class VanishingSource(FileSource):
        async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
            (root / "vanishing.md").unlink(missing_ok=True)
            return await super().read_many(entries, max_bytes)

    settings = load_settings(home=tmp_path / "home", embedder="hash://", workers=1)
    events = [
        e
        async for e in build_document_pipeline(
            settings, str(root), source=VanishingSource(str(root))
        ).iter_results()
    ]
    by_uri = {e.uri: e for e in events}
    assert isinstance(by_uri["a.md"], DocumentCompleted) and isinstance(by_uri["z.md"], DocumentCompleted)
    failed = by_uri["vanishing.md"]
    assert isinstance(failed, DocumentFailed) and failed.stage == "read"
    assert failed.message == "vanishing.md: cannot read: No such file or directory"
    # The next run finds it gone: its record goes, the others stay as they are.
    again = [e async for e in build_document_pipeline(settings, str(root)).iter_results()]
    assert sorted((type(e).__name__, e.uri) for e in again) == [
        ("DocumentDeleted", "vanishing.md"),
        ("DocumentSkipped", "a.md"),
        ("DocumentSkipped", "z.md"),
    ]


# -- long books and PDF bombs (issue #13) ---------------------------------------------------------


def test_a_10000_page_book_is_indexed_and_an_inflating_bomb_is_stopped_by_memory(
    cli: Cli, tmp_path: Path
) -> None:
    """With the defaults: no page limit rejects the book; the 3 MB bomb (15 GB of PDFium memory
    unbounded) is dead-lettered at the memory bound while everything else is indexed."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    (root / "manual.pdf").write_bytes(hostile_pdfs.book(10_000))
    (root / "bomb.pdf").write_bytes(hostile_pdfs.inflating_bomb(1))
    (root / "good.md").write_text("# Good\n\nStill indexed.")
    result = cli("ingest", "docs", str(root), "--home", str(home), "--json")
    assert "Traceback" not in result.stderr + result.stdout
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_uri = {e["uri"]: e for e in events if "uri" in e}
    assert by_uri["good.md"]["type"] == "DocumentCompleted"
    manual = by_uri["manual.pdf"]
    assert manual["type"] == "DocumentCompleted", manual
    # Every page's text is in the index, in order.
    exported = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    text = "".join(row["text"] for row in exported if row["uri"] == "manual.pdf")
    for i in (0, 1, 4999, 9998, 9999):
        assert hostile_pdfs.page_text(i) in text
    assert manual["chunks"] >= 10_000 * len(hostile_pdfs.page_text(0)) // 1000
    bomb = by_uri["bomb.pdf"]
    assert bomb["type"] == "DocumentFailed" and bomb["stage"] == "extract", bomb
    assert "bomb.pdf: PDF extraction needed more than its memory limit of 2048 MiB" in bomb["message"]
    assert cli("ingest", "docs", str(root), "--home", str(home), "--json").returncode == 0


def test_a_form_bomb_is_stopped_by_the_extraction_time_bound(cli: Cli, tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    (root / "forms.pdf").write_bytes(hostile_pdfs.form_bomb())
    (root / "good.md").write_text("# Good\n\nStill indexed.")
    final = cli.last_event(
        "ingest", "docs", str(root), "--home", str(home), env={"HEADWATER_EXTRACT_TIMEOUT_SECONDS": "1"}
    )
    assert final["documents_added"] == 1 and final["documents_failed"] == 1
    (letter,) = json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout)
    assert letter["input_ref"] == "forms.pdf" and letter["stage"] == "extract"
    # The time bound, unless PDFium reached the memory bound first (~5 s here).
    assert re.search(
        r"forms\.pdf: (extraction took longer than 1 s|PDF extraction needed more)", letter["message"]
    )
