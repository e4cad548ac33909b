"""Document state in ``state.db``: documents, their chunk keys and the scan's seen set
(ports.DocumentReader, DocumentLedger and ScanLog).

``synchronous=FULL`` (a committed "done" survives a power cut) except for claims and touches,
which only have to survive the process. Writes are batched: one transaction per commit group.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from headwater.adapters.sqlite.base import IN_BATCH, MetadataFiles, utc_now
from headwater.adapters.sqlite.connection import full_disk
from headwater.models import ChunkKey, DocState, Version, doc_state_from_row, doc_state_row

CHUNKS_TABLE = """CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, chunk_hash TEXT NOT NULL,
    PRIMARY KEY (doc_id, chunk_id)
) WITHOUT ROWID"""
DOCUMENTS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, uri TEXT NOT NULL, content_hash TEXT,
    size INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, error_count INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_listing ON documents (source, uri, size, mtime_ns, status);
DROP INDEX IF EXISTS documents_source;
{CHUNKS_TABLE};
"""
_DOC_COLUMNS = "doc_id, source, uri, content_hash, size, mtime_ns, status, attempts, error_count, version"
# A batch of the listing in, its rows out, as one JSON value each way: one SQLite step per
# batch. Row by row, the thread gave up and took back the GIL at every row, and while the
# event loop and the walking thread were busy each take waited its turn: a no-change re-run
# spent 1.7 s of its 2.3 s on lookups that take 0.5 s alone.
_VERSIONS_SQL = (
    "SELECT json_group_array(json_array(uri, json_array(size, mtime_ns, status, doc_id))) FROM documents "
    "WHERE source = ? AND uri IN (SELECT value FROM json_each(?))"
)
_THREE_FIELDS = "json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')"
_decode_versions = msgspec.json.Decoder(list[tuple[str, Version]]).decode
# Room kept next to state.db for one write on a full disk: a run that stops there releases its
# claims (see ``release``). Without it they stayed claimed and the next run did each of them
# alone, as a suspect: ~0.4 s a document, 15 minutes for the 2,000 in flight of a 3,000-file run.
RESERVE_BYTES = 4 << 20


def cluster_chunks_by_document(db: sqlite3.Connection) -> None:
    """Homes made before chunks were keyed by (doc_id, chunk_id) move their rows over, once.

    Keyed by the random chunk id, with a second index on doc_id, a document's chunk rows landed
    on as many pages as it had chunks, twice: a cold run's group commits spent most of their
    time writing those pages. Keyed by document first, they share a page, and the doc_id index
    is the key itself."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'chunks'").fetchone()
    if row is None or "PRIMARY KEY (doc_id, chunk_id)" in row[0]:
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE chunks RENAME TO chunks_by_chunk_id")
        db.execute("DROP INDEX IF EXISTS chunks_doc")
        db.execute(CHUNKS_TABLE)
        db.execute("INSERT INTO chunks SELECT chunk_id, doc_id, chunk_hash FROM chunks_by_chunk_id")
        db.execute("DROP TABLE chunks_by_chunk_id")


class DocumentTables(MetadataFiles):
    """Implements ports.DocumentReader, DocumentLedger and ScanLog on ``documents``, ``chunks``
    and the connection's temporary ``seen`` table."""

    async def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        return await self._thread.call(self._get_documents, list(doc_ids))

    def _get_documents(self, doc_ids: list[str]) -> dict[str, DocState]:
        found: dict[str, DocState] = {}
        for start in range(0, len(doc_ids), IN_BATCH):
            part = doc_ids[start : start + IN_BATCH]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE doc_id IN ({marks})", part
            ):
                found[row[0]] = doc_state_from_row(row)
        return found

    async def versions(self, source: str, uris: Sequence[str]) -> dict[str, Version]:
        return await self._thread.call(self._versions, source, list(uris))

    def _versions(self, source: str, uris: list[str]) -> dict[str, Version]:
        """From the covering index ``documents_listing``, in uri order: a listing's neighbours
        share its pages, where a lookup by the hashed doc_id lands on a random page each."""
        (packed,) = self.db.execute(_VERSIONS_SQL, (source, msgspec.json.encode(uris))).fetchone()
        return dict(_decode_versions(packed))

    async def get_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkKey]]:
        def _get() -> dict[str, list[ChunkKey]]:
            found: dict[str, list[ChunkKey]] = {}
            ids = list(doc_ids)
            for start in range(0, len(ids), IN_BATCH):
                part = ids[start : start + IN_BATCH]
                marks = ",".join("?" * len(part))
                sql = f"SELECT doc_id, chunk_id, chunk_hash FROM chunks WHERE doc_id IN ({marks})"
                for doc_id, chunk_id, chunk_hash in self.db.execute(sql, part):
                    found.setdefault(doc_id, []).append(
                        ChunkKey(doc_id=doc_id, chunk_id=chunk_id, chunk_hash=chunk_hash)
                    )
            return found

        return await self._thread.call(_get)

    @property
    def reserve(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _keep_reserve(self) -> None:
        """Set ``RESERVE_BYTES`` aside before the first claim of a writer (readers never make
        it); best effort: on a disk already too full for it, the run goes on without."""
        if self._reserved:
            return
        self._reserved = True
        try:
            if self.reserve.stat().st_size >= RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                else:  # pragma: no cover (not POSIX)
                    os.write(fd, bytes(RESERVE_BYTES))
            finally:
                os.close(fd)
        except OSError:
            self.reserve.unlink(missing_ok=True)

    async def claim(self, docs: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        def _claim() -> dict[str, int]:
            self._keep_reserve()
            now = utc_now()
            # An attempt only has to survive the process dying (OOM, segfault, kill -9), not a
            # power cut: NORMAL skips the fsync and makes the per-document claim cheap.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._tx(
                "INSERT INTO documents (doc_id, source, uri, status, attempts, updated_at) "
                f"SELECT {_THREE_FIELDS}, 'pending', 1, ? FROM json_each(?) "
                "WHERE true ON CONFLICT(doc_id) DO UPDATE SET "
                "status = 'pending', attempts = attempts + 1, source = excluded.source, "
                "uri = excluded.uri, updated_at = excluded.updated_at",
                [(now, msgspec.json.encode(docs))],
            )
            self.db.execute("PRAGMA synchronous=FULL")
            return {d.doc_id: d.attempts for d in self._get_documents([d[0] for d in docs]).values()}

        return await self._thread.call(_claim)

    async def release(self, doc_ids: Sequence[str]) -> None:
        def _release() -> None:
            sql = (
                "UPDATE documents SET attempts = max(attempts - 1, 0) "
                "WHERE status = 'pending' AND doc_id IN (SELECT value FROM json_each(?))"
            )
            rows = [(msgspec.json.encode(list(doc_ids)),)]
            try:
                self._tx(sql, rows)
            except sqlite3.Error as exc:
                # A run stopped by a full disk: the reserve makes room for this one write.
                if full_disk(exc, self.path) is None or not self.reserve.exists():
                    raise
                self.reserve.unlink()
                self._tx(sql, rows)

        if doc_ids:
            await self._thread.call(_release)

    async def commit(self, docs: Sequence[DocState], chunks: dict[str, Sequence[ChunkKey]]) -> None:
        def _commit() -> None:
            now = utc_now()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    f"INSERT OR REPLACE INTO documents ({_DOC_COLUMNS}, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*doc_state_row(d), now) for d in docs],
                )
                # One statement a table (see _VERSIONS_SQL): a group has thousands of chunks.
                self.db.execute(
                    "DELETE FROM chunks WHERE doc_id IN (SELECT value FROM json_each(?))",
                    (msgspec.json.encode(list(chunks)),),
                )
                rows = [(k.chunk_id, k.doc_id, k.chunk_hash) for keys in chunks.values() for k in keys]
                self.db.execute(
                    f"INSERT OR REPLACE INTO chunks SELECT {_THREE_FIELDS} FROM json_each(?)",
                    (msgspec.json.encode(rows),),
                )

        await self._thread.call(_commit)

    async def touch(self, docs: Sequence[DocState]) -> None:
        def _touch() -> None:
            # Like a claim, this need not survive a power cut (see ``DocumentState.touch``):
            # under another process's write-back an fsync here took ~0.2 s, a batch of files each.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._tx(
                "UPDATE documents SET size = ?, mtime_ns = ?, updated_at = ? WHERE doc_id = ?",
                [(d.size, d.mtime_ns, utc_now(), d.doc_id) for d in docs],
            )
            self.db.execute("PRAGMA synchronous=FULL")

        await self._thread.call(_touch)

    async def finish(self, doc_ids: Sequence[str], status: str = "done") -> None:
        await self._thread.call(
            self._tx,
            "UPDATE documents SET status = ?, updated_at = ?, "
            "attempts = CASE WHEN ? = 'done' THEN 0 ELSE attempts END WHERE doc_id = ?",
            [(status, utc_now(), status, doc_id) for doc_id in doc_ids],
        )

    async def forget(self, doc_ids: Sequence[str]) -> None:
        def _forget() -> None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("DELETE FROM chunks WHERE doc_id = ?", [(d,) for d in doc_ids])
                self.db.executemany("DELETE FROM documents WHERE doc_id = ?", [(d,) for d in doc_ids])

        await self._thread.call(_forget)

    async def documents_with_status(self, statuses: Sequence[str]) -> list[DocState]:
        marks = ",".join("?" * len(statuses))
        rows = await self._thread.call(
            lambda: self.db.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE status IN ({marks})", list(statuses)
            ).fetchall()
        )
        return [doc_state_from_row(r) for r in rows]

    async def note_seen(self, uris: Sequence[str]) -> None:
        def _note() -> None:
            # Keyed by uri, the listing appends in order (hashed ids landed anywhere); one
            # statement per batch (see _VERSIONS_SQL).
            self.db.execute(
                "INSERT OR IGNORE INTO seen SELECT value FROM json_each(?)", (msgspec.json.encode(uris),)
            )

        await self._thread.call(_note)

    async def unseen(self, source: str, limit: int) -> list[DocState]:
        def _unseen() -> list[DocState]:
            # The ids first, from the covering index alone: asked for whole rows, SQLite read
            # every row of the source before testing it against ``seen``.
            ids = self.db.execute(
                "SELECT doc_id FROM documents WHERE source = ? "
                "AND uri NOT IN (SELECT uri FROM seen) ORDER BY uri LIMIT ?",
                (source, limit),
            ).fetchall()
            found = self._get_documents([doc_id for (doc_id,) in ids])
            return sorted(found.values(), key=lambda d: d.uri)

        return await self._thread.call(_unseen)

    async def chunk_keys(self) -> AsyncIterator[ChunkKey]:
        after = ("", "")
        while True:
            rows = await self._thread.call(self._chunk_keys_after, after)
            if not rows:
                return
            for doc_id, chunk_id, chunk_hash in rows:
                yield ChunkKey(doc_id=doc_id, chunk_id=chunk_id, chunk_hash=chunk_hash)
            after = (rows[-1][0], rows[-1][1])

    def _chunk_keys_after(self, after: tuple[str, str]) -> list[Any]:
        sql = (
            "SELECT doc_id, chunk_id, chunk_hash FROM chunks WHERE (doc_id, chunk_id) > (?, ?) "
            "ORDER BY doc_id, chunk_id LIMIT 5000"
        )
        return self.db.execute(sql, after).fetchall()

    async def counts(self) -> dict[str, int]:
        def _counts() -> dict[str, int]:
            one = self.db.execute
            result = {
                "documents": one("SELECT count(*) FROM documents").fetchone()[0],
                "chunks": one("SELECT count(*) FROM chunks").fetchone()[0],
                "dlq": one("SELECT count(*) FROM dlq WHERE replayed_at IS NULL").fetchone()[0],
            }
            for status, n in one("SELECT status, count(*) FROM documents GROUP BY status"):
                result[f"documents_{status}"] = n
            return result

        return await self._thread.call(_counts)
