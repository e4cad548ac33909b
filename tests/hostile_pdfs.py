"""PDFs written by hand, in milliseconds: a long well-formed book and two kinds of PDF bomb.

Each object is one byte string; ``build`` numbers them from 1 (object 1 is the catalog) and
writes a correct cross-reference table, so PDFium opens them without repairing anything.
"""

from __future__ import annotations

import zlib

HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def build(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), entries, data)


def page_text(index: int) -> str:
    return f"Page {index + 1} of the reference manual: configuration, limits and recovery."


def book(pages: int) -> bytes:
    """``pages`` pages, each with its own line of text (``page_text``) in the middle of a running
    header and footer (which the pipeline strips as repeated page edges)."""
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        HELVETICA,
    ]
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        lines = [b"Reference manual", b"Overview", page_text(i).encode(), b"See the index.", b"%d" % i]
        shown = b" 0 -14 Td ".join(b"(%s) Tj" % line for line in lines)
        objects.append(stream(b"BT /F1 10 Tf 72 740 Td %s ET" % shown))
    return build(objects)


def _one_page(contents: bytes, resources: bytes, extra: list[bytes]) -> bytes:
    return build(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
            HELVETICA,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s /Contents 5 0 R >>"
            % resources,
            contents,
            *extra,
        ]
    )


def inflating_bomb(gib: float) -> bytes:
    """One page whose content stream inflates to ``gib`` GiB of text operators (3 MB per GiB on
    disk). PDFium parses the whole stream into objects: ~15 GB of memory per GiB, ~70 s."""
    chunk = b"BT /F1 12 Tf 72 720 Td (x) Tj ET\n" * 32768
    repeats = max(2, int(gib * (1 << 30)) // len(chunk))
    # A full flush makes each block independent, so one compressed block repeated is the
    # compressed form of the chunk repeated: gigabytes in milliseconds.
    compressor = zlib.compressobj(9)
    head = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()[:-4]  # the final block, without a checksum of only two chunks
    checksum = 1
    for _ in range(repeats):
        checksum = zlib.adler32(chunk, checksum)
    data = head + block * (repeats - 1) + tail + checksum.to_bytes(4, "big")
    return _one_page(stream(data, b"/Filter /FlateDecode"), b"<< /Font << /F1 3 0 R >> >>", [])


def form_bomb(levels: int = 12, fan_out: int = 4) -> bytes:
    """Form XObjects that each draw the next one ``fan_out`` times: fan_out ** levels draws of a
    file of 3 KB (4 ** 12 = 16 million; PDFium's memory grows by ~400 MB a second)."""
    forms = []
    for level in range(levels):
        if level == levels - 1:
            body, resources = b"BT /F1 12 Tf 72 720 Td (leaf) Tj ET", b"<< /Font << /F1 3 0 R >> >>"
        else:
            body = b"/X Do " * fan_out
            resources = b"<< /Font << /F1 3 0 R >> /XObject << /X %d 0 R >> >>" % (7 + level)
        forms.append(
            stream(body, b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources " + resources)
        )
    return _one_page(stream(b"/X Do"), b"<< /Font << /F1 3 0 R >> /XObject << /X 6 0 R >> >>", forms)
