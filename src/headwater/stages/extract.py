"""Bytes → text, by file type. Bad input raises InputError naming the file, the field and why.

HTML (``.html .htm .xhtml``) is reduced to the text a reader sees (``stages/html.py``).
Text formats are decoded strictly: a BOM picks UTF-8/16/32, otherwise the bytes must be valid
UTF-8; the first invalid byte is reported with its offset rather than silently replaced. PDFs go
through PDFium (pypdfium2, ~14 times faster than pypdf here), page by page, bounded by memory and
text size rather than by a page count (a 2,415-page manual is a normal input).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from headwater.errors import InputError
from headwater.stages.html import HTML_SUFFIXES, html_to_text

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".text"})
PDF_SUFFIXES = frozenset({".pdf"})
PDF_MAX_MEMORY_BYTES = 2 * 1024 * 1024 * 1024  # address space a PDF's extraction may add to its process
PDF_MAX_TEXT_BYTES = 256 * 1024 * 1024  # ~80,000 pages of dense text
_MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1
_PAGE, _FAIL, _DONE = b"P", b"F", b"D"
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


@dataclass(frozen=True, slots=True)
class Extracted:
    """Text of one document; ``pages`` is set for paginated formats (header/footer removal needs it)."""

    text: str
    pages: list[str] = field(default_factory=list)
    encoding: str = "utf-8"


def suffix_of(relpath: str) -> str:
    name = relpath.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def extract(
    relpath: str,
    data: bytes,
    *,
    pdf_max_pages: int = 0,
    pdf_max_memory_bytes: int = PDF_MAX_MEMORY_BYTES,
    pdf_max_text_bytes: int = PDF_MAX_TEXT_BYTES,
) -> Extracted:
    suffix = suffix_of(relpath)
    if suffix in PDF_SUFFIXES:
        return extract_pdf(
            relpath,
            data,
            max_pages=pdf_max_pages,
            max_memory_bytes=pdf_max_memory_bytes,
            max_text_bytes=pdf_max_text_bytes,
        )
    if suffix in TEXT_SUFFIXES:
        return decode_text(relpath, data)
    if suffix in HTML_SUFFIXES:
        return Extracted(text=html_to_text(relpath, data), encoding="html")
    msg = f"{relpath}: unsupported file type {suffix or '(no suffix)'!r}"
    raise InputError(msg, field="suffix")


def decode_text(relpath: str, data: bytes) -> Extracted:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return Extracted(text=data[len(bom) :].decode(encoding), encoding=encoding)
            except UnicodeDecodeError as exc:
                msg = f"{relpath}: invalid {encoding} at byte {exc.start + len(bom)}: {exc.reason}"
                raise InputError(msg, field="content") from exc
    if b"\x00" in data[:8192]:
        msg = f"{relpath}: binary data (NUL bytes) in a text file"
        raise InputError(msg, field="content")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{relpath}: invalid UTF-8 at byte {exc.start} (0x{data[exc.start]:02x}): {exc.reason}"
        raise InputError(msg, field="content") from exc
    return Extracted(text=text)


def extract_pdf(
    relpath: str,
    data: bytes,
    *,
    max_pages: int = 0,
    max_memory_bytes: int = PDF_MAX_MEMORY_BYTES,
    max_text_bytes: int = PDF_MAX_TEXT_BYTES,
) -> Extracted:
    """The text of each page, page by page. ``max_pages`` 0 means no page limit.

    On Linux the pages are read in a forked child whose address space may grow by at most
    ``max_memory_bytes`` (``RLIMIT_AS``): a few megabytes of PDF can make PDFium allocate tens of
    gigabytes (a content stream that inflates to gigabytes, forms drawing forms), and the child
    is stopped there, alone, instead of the machine. Time is bounded by the caller (the CPU pool
    kills a worker that runs past ``HEADWATER_EXTRACT_TIMEOUT_SECONDS``; the child dies with it).
    """
    if not data.lstrip()[:5].startswith(b"%PDF"):
        msg = f"{relpath}: not a PDF (no %PDF header)"
        raise InputError(msg, field="content")
    if _isolation_is_safe():
        pages = _pdf_pages_in_child(relpath, data, max_pages, max_memory_bytes, max_text_bytes)
    else:
        pages = list(_pdf_pages(relpath, data, max_pages, max_text_bytes))
    return Extracted(text="\n\n".join(pages), pages=pages, encoding="pdf")


def _pdf_pages(relpath: str, data: bytes, max_pages: int, max_text_bytes: int) -> Iterator[str]:
    """One page's text at a time; only one page is open at once."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = "encrypted (password required)" if "password" in str(exc).lower() else str(exc)
        msg = f"{relpath}: cannot open PDF: {reason}"
        raise InputError(msg, field="content") from exc
    try:
        count = len(pdf)
        if max_pages and count > max_pages:
            msg = f"{relpath}: {count} pages is over the limit of {max_pages} pages"
            raise InputError(msg, field="pages")
        total = 0
        for index in range(count):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_bounded()
                textpage.close()
            finally:
                page.close()
            total += len(text)  # characters: a lower bound of the bytes, checked exactly later
            if total > max_text_bytes:
                msg = f"{relpath}: over {max_text_bytes // _MIB} MiB of text (at page {index + 1} of {count})"
                raise InputError(msg, field="content")
            yield well_formed(text)
    except pdfium.PdfiumError as exc:
        msg = f"{relpath}: cannot read PDF text: {exc}"
        raise InputError(msg, field="content") from exc
    finally:
        pdf.close()


_SURROGATES = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """PDFium's UTF-16 may hold unpaired surrogates (a broken font map): no codec encodes them,
    so hashing the chunk, an embedder's request, a JSON line would each fail. Pairs become their
    character, a lone half U+FFFD; text without any is returned as is (one regex scan)."""
    if _SURROGATES.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _isolation_is_safe() -> bool:
    """Linux (``prctl`` and ``RLIMIT_AS``). Also once lancedb's runtime threads are loaded (the CPU
    pool then extracts in a thread of the main process, where a bomb matters most): the child
    runs only PDFium and writes to a pipe, imports nothing and takes no lock another thread could
    hold (glibc's malloc is made safe across fork by its own fork handlers)."""
    return sys.platform == "linux"


def _pdf_pages_in_child(
    relpath: str, data: bytes, max_pages: int, max_memory_bytes: int, max_text_bytes: int
) -> list[str]:
    import ctypes  # imported before the fork: a child never imports (the import lock may be held)
    import faulthandler
    import resource
    import signal

    import pypdfium2  # noqa: F401

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    receiving, sending = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(receiving)
        faulthandler.disable()  # an expected abort at the memory limit is reported by the parent
        _child(libc, resource, signal, sending, relpath, data, max_pages, max_memory_bytes, max_text_bytes)
    os.close(sending)
    pages: list[str] = []
    error: tuple[str, str] | None = None
    finished = False
    try:
        with os.fdopen(receiving, "rb") as frames:
            while (head := frames.read(5)) and len(head) == 5:
                kind, size = head[:1], int.from_bytes(head[1:], "big")
                payload = frames.read(size).decode("utf-8", "surrogatepass")
                if kind == _PAGE:
                    pages.append(payload)
                elif kind == _FAIL:
                    field_name, _, message = payload.partition("\n")
                    error = (field_name, message)
                else:
                    finished = kind == _DONE
                    break
    finally:
        if not finished and error is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # we stopped reading early: nothing else will stop it
        _, status, usage = os.wait4(pid, 0)
    if error is not None:
        raise InputError(error[1], field=error[0])
    if finished:
        return pages
    peak_mib = usage.ru_maxrss // 1024
    code = os.waitstatus_to_exitcode(status)
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    if peak_mib * _MIB >= max_memory_bytes // 2:
        msg = (
            f"{relpath}: PDF extraction needed more than its memory limit of {max_memory_bytes // _MIB} MiB "
            f"and was stopped (peak {peak_mib} MiB resident, {how})"
        )
    else:
        msg = f"{relpath}: the PDF extractor crashed on this input ({how}, peak {peak_mib} MiB resident)"
    raise InputError(msg, field="content")


def _child(  # the child's whole world, passed in before the fork
    libc: Any,
    resource: Any,
    signal: Any,
    sending: int,
    relpath: str,
    data: bytes,
    max_pages: int,
    max_memory_bytes: int,
    max_text_bytes: int,
) -> NoReturn:
    code = 0
    try:
        # Stop signals are the parent's to handle (a Ctrl-C reaches the whole process group: the
        # child must not look like an input that crashed it); a killed parent takes it along.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
        statm = os.open("/proc/self/statm", os.O_RDONLY)
        mapped = int(os.read(statm, 4096).split()[0]) * os.sysconf("SC_PAGE_SIZE")
        os.close(statm)
        limit = mapped + max_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out = os.fdopen(sending, "wb", buffering=1 << 16)
        total = 0
        try:
            for text in _pdf_pages(relpath, data, max_pages, max_text_bytes):
                encoded = text.encode("utf-8", "surrogatepass")
                total += len(encoded)
                if total > max_text_bytes:
                    msg = f"{relpath}: over {max_text_bytes // _MIB} MiB of text"
                    raise InputError(msg, field="content")  # noqa: TRY301 - reported below like the others
                out.write(_PAGE + len(encoded).to_bytes(4, "big") + encoded)
        except InputError as exc:
            message = f"{exc.field or 'content'}\n{exc}".encode("utf-8", "surrogatepass")
            out.write(_FAIL + len(message).to_bytes(4, "big") + message)
        else:
            out.write(_DONE + bytes(4))
        out.flush()
    except MemoryError:
        code = 3  # reported by the parent from the exit status and the peak memory
    except BaseException:  # noqa: BLE001 - a child must never return into its parent's code
        code = 4
    os._exit(code)
