"""PostgreSQL adapters' home: the metadata store (``postgresql://USER@HOST:PORT/DB?schema=S``),
one module a job, after the SQLite store's layout.

- ``connection``: the URL (schema from its query), the pool, driver errors told as the engine's;
- ``migrations``: the schema as an ordered list of versioned steps, applied once under a lock;
- ``base``: the store's pool and one-transaction calls;
- ``documents``, ``dead_letters``, ``cache``: its tables, one port each;
- ``store``: ``PostgresMetadataStore``, composed of them, with the home's settings.
"""

from __future__ import annotations

from headwater.adapters.postgres.connection import parse_url
from headwater.adapters.postgres.migrations import LATEST_VERSION
from headwater.adapters.postgres.store import PostgresMetadataStore

__all__ = ["LATEST_VERSION", "PostgresMetadataStore", "parse_url"]
