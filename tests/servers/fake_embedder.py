"""A real HTTP server on 127.0.0.1 that speaks the OpenAI embeddings API, with faults on cue.

Vectors are the hash embedder's (``embed_hash``), so a test knows exactly what each text must get.
``plan`` is a list of behaviours consumed one per request (then ``"ok"`` for ever):

    ok                  normal answer, items in input order
    reversed            normal answer, items listed in reverse order (with their ``index``)
    429:SECONDS         429 Too Many Requests with ``Retry-After: SECONDS``
    429                 429 without Retry-After
    500 / 503 / 401 / 400   that status with an OpenAI-style error body
    slow:SECONDS        wait, then answer normally (the client's timeout should fire first)
    wrong_dim           vectors one dimension short
    nan / inf           one value NaN, or too large for float32
    short               one embedding fewer than inputs
    garbage             200 with a body that is not JSON
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from headwater.adapters.hashembed import embed_hash


class FakeEmbeddingServer:
    def __init__(self, dimensions: int = 16, plan: list[str] | None = None, *, port: int = 0) -> None:
        """``port``: 0 picks a free one; a stopped server's port brings "the same server" back."""
        self.dimensions = dimensions
        self.plan = list(plan or [])
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-embedder",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1/embeddings"

    def start(self) -> FakeEmbeddingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def next_behaviour(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self.plan.pop(0) if self.plan else "ok"

    def answer(self, behaviour: str, texts: list[str]) -> tuple[int, dict[str, str], bytes]:
        name, _, arg = behaviour.partition(":")
        if name in ("429", "500", "503", "401", "400"):
            headers = {"Retry-After": arg} if arg else {}
            error = {"error": {"message": f"injected {name} (key sk-fake1234567890 must not leak)"}}
            return int(name), headers, json.dumps(error).encode()
        if name == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html>proxy error</html>"
        if name == "slow":
            time.sleep(float(arg))
        vectors = embed_hash(texts, self.dimensions).tolist()
        if name == "wrong_dim":
            vectors = [v[:-1] for v in vectors]
        elif name in ("nan", "inf"):
            vectors[-1][0] = float("nan") if name == "nan" else 1e39
        items = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        if name == "reversed":
            items.reverse()
        elif name == "short":
            items.pop()
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"object": "list", "data": items}).encode(),
        )


def _handler(fake: FakeEmbeddingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            behaviour = fake.next_behaviour(body, dict(self.headers.items()))
            try:
                status, headers, data = fake.answer(behaviour, list(body.get("input", [])))
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler
