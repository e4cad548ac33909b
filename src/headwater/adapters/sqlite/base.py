"""The metadata store's shared parts: its files, threads and connections, and one-statement
transactions. The tables' modules (documents, dead letters, cache, settings) build on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from headwater.adapters.sqlite.connection import path_from_url, store_thread

IN_BATCH = 500  # stays under SQLite's host-parameter limit


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class MetadataFiles:
    """``state.db`` (documents, chunk keys, dead letters, settings) on one thread, and
    ``cache.db`` beside it (embeddings) on another; connected by the store's ``open``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url, "metadata store", "sqlite:///path/to/state.db")
        self._thread = store_thread("sqlite", self.path)
        self._cache_thread = store_thread("sqlite-cache", self.path.with_name("cache.db"))
        self._db: sqlite3.Connection | None = None
        self._cache: sqlite3.Connection | None = None
        self._reserved = False

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            msg = f"metadata store {self.url} used before open()"
            raise RuntimeError(msg)
        return self._db

    def _tx(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, rows)
