"""The URL, the connections and the errors: what the PostgreSQL stores share (metadata and jobs
here, vectors in ``adapters/pgvector.py``).

``postgresql://USER[:PASSWORD]@HOST:PORT/DB?schema=headwater`` (``postgres://`` too; libpq's
usual places work: ``PGPASSWORD``, ``~/.pgpass``, ``sslmode=…`` in the query). ``schema`` names
the index: several homes or workers, on several machines, share one schema; several indexes
share one database with a schema each.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from headwater.errors import ConfigError, StoreUnavailable
from headwater.redaction import redact_url

if TYPE_CHECKING:
    from psycopg import AsyncConnection

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "headwater"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CONNECT_TIMEOUT_S = 15


def parse_url(url: str) -> tuple[str, str]:
    """``postgresql://…?schema=S`` → (libpq conninfo URL without ``schema``, schema name)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.netloc or parts.path in ("", "/"):
        msg = (
            f"metadata store URL {redact_url(url)!r} must look like "
            "postgresql://USER@HOST:PORT/DB?schema=headwater"
        )
        raise ConfigError(msg)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", DEFAULT_SCHEMA)
    if not _NAME.fullmatch(schema):
        msg = (
            f"metadata store URL {redact_url(url)!r}: schema {schema!r} is not a plain name "
            "(letters, digits and _, at most 63)"
        )
        raise ConfigError(msg)
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), "")), schema


async def connect(url: str, conninfo: str, what: str = "metadata store") -> AsyncConnection[Any]:
    """One connection of its own (migrations, the scan's seen set); a server that answered
    (a wrong database, user or password) is a ConfigError, one that did not is unavailable."""
    import psycopg

    try:
        return await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.OperationalError as exc:
        msg = f"cannot open the {what} {redact_url(url)}: {reason(exc)}"
        if "FATAL:" in str(exc):
            raise ConfigError(msg) from exc
        raise StoreUnavailable(msg) from exc


@contextlib.asynccontextmanager
async def errors(url: str, what: str = "metadata store") -> AsyncIterator[None]:
    """Driver errors as the engine's: a lost connection or a server restart is retryable (the
    group is replayed) and stops the run once the retries are spent; anything else propagates."""
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        msg = f"{what} {redact_url(url)} unavailable: {reason(exc)}"
        raise StoreUnavailable(msg) from exc


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_url(text[0]) if text else type(exc).__name__


def quoted(name: str) -> str:
    """A name ``parse_url`` checked, quoted: its case is kept, and no keyword can clash."""
    return f'"{name}"'
