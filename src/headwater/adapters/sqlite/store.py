"""The SQLite metadata store: one class composed of the tables' modules, opened and closed
together (ports.MetadataStore), plus the home's settings.

State lives in ``state.db`` in WAL mode with ``synchronous=FULL`` (a committed "done" survives a
power cut); the embedding cache lives in ``cache.db`` with ``synchronous=NORMAL``, because losing a
cache entry only costs a re-embedding.
"""

from __future__ import annotations

import sqlite3

from headwater.adapters.sqlite.cache import CACHE_SCHEMA, EmbeddingCacheFile
from headwater.adapters.sqlite.connection import connect, full_disk
from headwater.adapters.sqlite.dead_letters import DLQ_SCHEMA, DeadLetterTable, migrate_dlq
from headwater.adapters.sqlite.documents import DOCUMENTS_SCHEMA, DocumentTables, cluster_chunks_by_document

SETTINGS_SCHEMA = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
_WAL_CHECKPOINT_PAGES = 4000  # 16 MB of WAL at most between checkpoints


class SQLiteMetadataStore(DocumentTables, DeadLetterTable, EmbeddingCacheFile):
    """Implements ports.MetadataStore: DocumentState, DeadLetters, EmbeddingCache and
    SettingsStore on one SQLite file (+ the cache file)."""

    async def open(self) -> None:
        await self._thread.call(self._open)

    def _open(self) -> None:
        self._db = connect(self.path, "FULL")
        # Commits dirty pages all over the random-keyed tables: checkpointing the WAL every 1000
        # pages (the default) rewrote most of the database file on nearly every group commit.
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        cluster_chunks_by_document(self._db)
        self._db.executescript(DOCUMENTS_SCHEMA + DLQ_SCHEMA + SETTINGS_SCHEMA)
        migrate_dlq(self._db)
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (uri TEXT PRIMARY KEY) WITHOUT ROWID")
        cache = self.path.with_name("cache.db")
        try:
            self._cache = connect(cache, "NORMAL")
            self._cache.executescript(CACHE_SCHEMA)
        except sqlite3.Error as exc:
            if (full := full_disk(exc, cache)) is None:
                raise
            raise full from exc

    async def close(self) -> None:
        def _close() -> None:
            for conn in (self._db, self._cache):
                if conn is not None:
                    conn.close()
            self._db = self._cache = None

        await self._thread.call(_close)
        self._thread.shutdown()
        self._cache_thread.shutdown()

    async def get_setting(self, key: str) -> str | None:
        def _get() -> str | None:
            row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._thread.call(_get)

    async def set_setting(self, key: str, value: str) -> None:
        await self._thread.call(
            self._tx,
            "INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(key, value)],
        )
