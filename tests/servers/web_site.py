"""A small real web server on 127.0.0.1 for the ``https://`` source: it serves a folder, with
ETag and Last-Modified on every file and ``304`` for If-None-Match / If-Modified-Since, and
lists the folder as ``/sitemap.xml`` (a ``<urlset>``) and ``/urls.txt``, generated per request.

It logs every request (method, path, conditional or not, status) and injects faults on cue:
``fail(path, [503, 503])`` answers the next requests of ``path`` with those statuses
(``"reset"`` closes the connection instead), ``deny(path, 403)`` answers it for good.
Run in a thread of the test process (``start``/``stop``), or as a script: ``python -m
tests.servers.web_site ROOT``.
"""

from __future__ import annotations

import atexit
import email.utils
import hashlib
import shutil
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".txt": "text/plain",
}


@dataclass
class Logged:
    method: str
    path: str
    conditional: bool
    status: int


@dataclass
class SiteState:
    root: Path
    log: list[Logged] = field(default_factory=list)
    faults: dict[str, list[int | str]] = field(default_factory=dict)
    denied: dict[str, int] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # served, but left out of the listings
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebSite:
    def __init__(self, root: Path) -> None:
        self.state = SiteState(root)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> WebSite:
        state = self.state

        class Handler(_Handler):
            site = state

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def fail(self, path: str, statuses: list[int | str]) -> None:
        with self.state.lock:
            self.state.faults[path] = list(statuses)

    def deny(self, path: str, status: int = 403) -> None:
        with self.state.lock:
            self.state.denied[path] = status

    def requests(self) -> list[Logged]:
        with self.state.lock:
            taken = list(self.state.log)
            self.state.log.clear()
        return taken


class _Handler(BaseHTTPRequestHandler):
    site: SiteState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        conditional = "If-None-Match" in self.headers or "If-Modified-Since" in self.headers
        with self.site.lock:
            queued = self.site.faults.get(path)
            fault = queued.pop(0) if queued else None
            denied = self.site.denied.get(path)
        if fault == "reset":
            self._log(path, conditional, 0)
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()
            self.close_connection = True
            return
        if isinstance(fault, int) or denied:
            status = fault if isinstance(fault, int) else denied
            assert status is not None
            headers = {"Retry-After": "0"} if status >= 500 or status == 429 else {}
            self._send(path, conditional, status, b"no\n", headers, body=body)
            return
        if path in ("/sitemap.xml", "/urls.txt"):
            self._listing(path, conditional, body=body)
            return
        self._file(path, conditional, body=body)

    def _listing(self, path: str, conditional: bool, *, body: bool) -> None:
        root = self.site.root
        if not root.is_dir():
            self._send(path, conditional, 404, b"no site\n", {}, body=body)
            return
        base = f"http://{self.headers.get('Host')}/"
        names = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).as_posix() not in self.site.hidden
        )
        urls = [base + quote(name) for name in names]
        if path == "/urls.txt":
            data = ("# the pages\n" + "".join(u + "\n" for u in urls)).encode()
            kind = "text/plain"
        else:
            items = "".join(f"<url><loc>{escape(u)}</loc></url>" for u in urls)
            data = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{items}</urlset>\n'
            ).encode()
            kind = "application/xml"
        self._send(path, conditional, 200, data, {"Content-Type": kind}, body=body)

    def _file(self, path: str, conditional: bool, *, body: bool) -> None:
        root = self.site.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            self._send(path, conditional, 404, b"not found\n", {}, body=body)
            return
        data = target.read_bytes()
        stat = target.stat()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        headers = {
            "ETag": etag,
            "Last-Modified": modified,
            "Content-Type": _TYPES.get(target.suffix, "application/octet-stream"),
        }
        if self.headers.get("If-None-Match") == etag or (
            "If-None-Match" not in self.headers and self.headers.get("If-Modified-Since") == modified
        ):
            self._send(path, conditional, 304, b"", headers, body=False)
            return
        self._send(path, conditional, 200, data, headers, body=body)

    def _send(
        self, path: str, conditional: bool, status: int, data: bytes, headers: dict[str, str], *, body: bool
    ) -> None:
        self._log(path, conditional, status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and status != 304:
            self.wfile.write(data)

    def _log(self, path: str, conditional: bool, status: int) -> None:
        with self.site.lock:
            self.site.log.append(Logged(self.command, path, conditional, status))


class SiteTree:
    """The Source contract's ``Tree`` for ``http://`` listings (tests/contract/test_source.py):
    objects are files of a folder a ``WebSite`` serves; ``{root}`` in the URL template is the
    server's ``127.0.0.1:PORT``. The server stops when the test session ends."""

    def __init__(self, template: str, base: Path) -> None:
        self.root = base / "root"
        self.root.mkdir()
        self.site = WebSite(self.root).start()
        atexit.register(self.site.stop)
        self.url = template.format(root=self.site.url.removeprefix("http://"))

    def put(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def remove(self, relpath: str) -> None:
        (self.root / relpath).unlink()

    def put_outside(self, name: str, data: bytes) -> str:
        (self.root.parent / name).write_bytes(data)
        return f"../{name}"

    def remove_root(self) -> None:
        shutil.rmtree(self.root)


if __name__ == "__main__":  # pragma: no cover - a manual aid
    site = WebSite(Path(sys.argv[1])).start()
    print(site.url, flush=True)
    threading.Event().wait()
