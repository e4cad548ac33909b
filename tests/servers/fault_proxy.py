"""An HTTP reverse proxy in front of a test server that logs every request and injects faults:
a status code (403, 503 with a body), or a reset (the connection closed, no response), for the
requests whose path matches a rule, the first N times or always.

Real stores throttle, fail with 5xx and drop connections; their emulators never do. The proxy
makes a test say which request fails how, against the real server behind it (Toxiproxy is not
available here: NOTES.md).
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 429: "SlowDown", 500: "InternalError", 503: "SlowDown"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


@dataclass
class Rule:
    pattern: re.Pattern[str]  # searched in "METHOD /path?query"
    fault: int | str  # a status code, or "reset"
    times: int | None  # None: always
    method: str | None = None


@dataclass
class FaultProxy:
    """``url`` is where clients connect; ``requests`` is every request seen, as "METHOD path"."""

    upstream: str
    requests: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(
        self, pattern: str, fault: int | str, times: int | None = None, method: str | None = None
    ) -> None:
        with self.lock:
            self.rules.append(Rule(re.compile(pattern), fault, times, method))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, method: str, target: str) -> int | str | None:
        with self.lock:
            self.requests.append(f"{method} {target}")
            for rule in self.rules:
                if rule.method not in (None, method) or not rule.pattern.search(f"{method} {target}"):
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                return rule.fault
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        fault = self._fault(request.command, request.path)
        if fault == "reset":
            request.close_connection = True
            request.connection.close()
            return
        if isinstance(fault, int):
            code = S3_CODES.get(fault, "InternalError")
            payload = f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>".encode()
            request.send_response(fault)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(payload)
            return
        self._forward(request, body)

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        upstream = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            connection.request(request.command, request.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
