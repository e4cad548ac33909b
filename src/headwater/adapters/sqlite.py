"""SQLite metadata store: document state, chunk keys, the DLQ and the embedding cache.

State lives in ``state.db`` in WAL mode with ``synchronous=FULL`` (a committed "done" survives a
power cut); the embedding cache lives in ``cache.db`` with ``synchronous=NORMAL``, because losing a
cache entry only costs a re-embedding. Writes are batched: one transaction per commit group.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import msgspec

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError, disk_full
from headwater.models import ChunkKey, DeadLetter, DocState, Vectors, Version

CHUNKS_TABLE = """CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, chunk_hash TEXT NOT NULL,
    PRIMARY KEY (doc_id, chunk_id)
) WITHOUT ROWID"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, uri TEXT NOT NULL, content_hash TEXT,
    size INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, error_count INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_listing ON documents (source, uri, size, mtime_ns, status);
DROP INDEX IF EXISTS documents_source;
{CHUNKS_TABLE};
CREATE TABLE IF NOT EXISTS dlq (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, input_ref TEXT NOT NULL,
    source TEXT NOT NULL, stage TEXT NOT NULL, error_type TEXT NOT NULL, message TEXT NOT NULL,
    traceback TEXT NOT NULL, attempts INTEGER NOT NULL, created_at TEXT NOT NULL, replayed_at TEXT,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    embedder_id TEXT NOT NULL, chunk_hash TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (embedder_id, chunk_hash)
) WITHOUT ROWID;
"""
_DOC_COLUMNS = "doc_id, source, uri, content_hash, size, mtime_ns, status, attempts, error_count, version"
_IN_BATCH = 500  # stays under SQLite's host-parameter limit
_WAL_CHECKPOINT_PAGES = 4000  # 16 MB of WAL at most between checkpoints
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
P = ParamSpec("P")
R = TypeVar("R")
# Result codes SQLite gives a write that found no space: SQLITE_FULL ("database or disk is
# full"), and the I/O errors of a write, an fsync, a truncate or the growth of the WAL index,
# which are only a full disk when the disk is indeed (nearly) full.
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_NEARLY_FULL_BYTES = 1 << 20
# Room kept next to state.db for one write on a full disk: a run that stops there releases its
# claims (see ``release``). Without it they stayed claimed and the next run did each of them
# alone, as a suspect: ~0.4 s a document, 15 minutes for the 2,000 in flight of a 3,000-file run.
RESERVE_BYTES = 4 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _path_from_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path:
        msg = f"metadata store URL {url!r} must look like sqlite:///path/to/state.db"
        raise ConfigError(msg)
    return Path(parts.path)


def enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switching a new database to WAL takes an exclusive lock and answers "locked" at once
    (no busy wait) when two processes open the same fresh home together: retry briefly."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
        else:
            return


def _cluster_chunks_by_document(db: sqlite3.Connection) -> None:
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


def full_disk(exc: BaseException, path: Path) -> OSError | None:
    """A SQLite error that means "no space left on device", as the OSError a write of ``path``
    would have raised (ENOSPC, naming the file), or None. SQLite says it without a file name
    ("database or disk is full", or a "disk I/O error" when the WAL or its index cannot grow):
    the one line that ends the run names the store instead (``errors.disk_full``)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    said_full = disk_full(exc) is not None or code == _SQLITE_FULL
    if not said_full and (code != _SQLITE_IOERR or _free_bytes(path) > _NEARLY_FULL_BYTES):
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.realpath(path))


def _free_bytes(path: Path) -> int:
    try:
        found = os.statvfs(path.parent)
    except OSError:
        return _NEARLY_FULL_BYTES + 1
    return found.f_bavail * found.f_frsize


class _StoreThread(OwnThread):
    """The store's own thread; a full disk comes out of it as an OSError naming the file."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await super().call(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            if (full := full_disk(exc, self.path)) is None:
                raise
            raise full from exc


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    enable_wal(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteMetadataStore:
    """Implements DocumentState, DeadLetters and EmbeddingCache on one SQLite file (+ cache file)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = _path_from_url(url)
        self._thread = _StoreThread("sqlite", self.path)
        self._cache_thread = _StoreThread("sqlite-cache", self.path.with_name("cache.db"))
        self._db: sqlite3.Connection | None = None
        self._cache: sqlite3.Connection | None = None
        self._reserved = False

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        await self._thread.call(self._open)

    def _open(self) -> None:
        self._db = _connect(self.path, "FULL")
        # Commits dirty pages all over the random-keyed tables: checkpointing the WAL every 1000
        # pages (the default) rewrote most of the database file on nearly every group commit.
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        _cluster_chunks_by_document(self._db)
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(dlq)")}
        if "payload" not in columns:  # homes created before dead-lettered messages kept their body
            self._db.execute("ALTER TABLE dlq ADD COLUMN payload BLOB")
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (uri TEXT PRIMARY KEY) WITHOUT ROWID")
        cache = self.path.with_name("cache.db")
        try:
            self._cache = _connect(cache, "NORMAL")
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

    # -- settings ----------------------------------------------------------------------------
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

    # -- DocumentState -------------------------------------------------------------------------
    async def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        return await self._thread.call(self._get_documents, list(doc_ids))

    def _get_documents(self, doc_ids: list[str]) -> dict[str, DocState]:
        found: dict[str, DocState] = {}
        for start in range(0, len(doc_ids), _IN_BATCH):
            part = doc_ids[start : start + _IN_BATCH]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE doc_id IN ({marks})", part
            ):
                found[row[0]] = _doc_from_row(row)
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
            for start in range(0, len(ids), _IN_BATCH):
                part = ids[start : start + _IN_BATCH]
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
            now = _now()
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
            now = _now()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    f"INSERT OR REPLACE INTO documents ({_DOC_COLUMNS}, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*_doc_to_row(d), now) for d in docs],
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
                [(d.size, d.mtime_ns, _now(), d.doc_id) for d in docs],
            )
            self.db.execute("PRAGMA synchronous=FULL")

        await self._thread.call(_touch)

    async def finish(self, doc_ids: Sequence[str], status: str = "done") -> None:
        await self._thread.call(
            self._tx,
            "UPDATE documents SET status = ?, updated_at = ?, "
            "attempts = CASE WHEN ? = 'done' THEN 0 ELSE attempts END WHERE doc_id = ?",
            [(status, _now(), status, doc_id) for doc_id in doc_ids],
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
        return [_doc_from_row(r) for r in rows]

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

    # -- DeadLetters ---------------------------------------------------------------------------
    async def add(self, letter: DeadLetter) -> int:
        """Stored without secrets (a dead letter is read by people and shipped to dashboards)
        and otherwise as it came: message, traceback and source keep their timestamps, numbers
        and hosts; the reference is what replay looks up (a path or a bus position); and the
        payload (the original record or message, what replay sends) stays byte for byte unless
        it holds a secret."""
        from headwater.observability import redact  # lazily: structlog and prometheus cost ~0.1 s

        message, traceback = redact(letter.message), redact(letter.traceback)
        source = redact(letter.source)
        payload = None if letter.payload is None else redact(letter.payload)

        def _add() -> int:
            with self.db:
                cur = self.db.execute(
                    "INSERT INTO dlq (kind, input_ref, source, stage, error_type, message, traceback, "
                    "attempts, created_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        letter.kind,
                        letter.input_ref,
                        source,
                        letter.stage,
                        letter.error_type,
                        message,
                        traceback,
                        letter.attempts,
                        letter.created_at or _now(),
                        payload,
                    ),
                )
                return int(cur.lastrowid or 0)

        return await self._thread.call(_add)

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = await self._thread.call(
            lambda: self.db.execute(f"SELECT * FROM dlq {where} ORDER BY id LIMIT ?", (limit,)).fetchall()
        )
        return [_letter_from_row(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        row = await self._thread.call(
            lambda: self.db.execute("SELECT * FROM dlq WHERE id = ?", (letter_id,)).fetchone()
        )
        return None if row is None else _letter_from_row(row)

    async def mark_replayed(self, letter_ids: Sequence[int]) -> None:
        await self._thread.call(
            self._tx, "UPDATE dlq SET replayed_at = ? WHERE id = ?", [(_now(), i) for i in letter_ids]
        )

    # -- EmbeddingCache ------------------------------------------------------------------------
    async def get_vectors(self, embedder_id: str, chunk_hashes: Sequence[str]) -> dict[str, Vectors]:
        import numpy as np

        def _get() -> dict[str, Vectors]:
            assert self._cache is not None
            found: dict[str, Vectors] = {}
            hashes = list(chunk_hashes)
            for start in range(0, len(hashes), _IN_BATCH):
                part = hashes[start : start + _IN_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._cache.execute(
                    "SELECT chunk_hash, vector FROM embeddings WHERE embedder_id = ? "
                    f"AND chunk_hash IN ({marks})",
                    [embedder_id, *part],
                )
                for chunk_hash, blob in rows:
                    found[chunk_hash] = np.frombuffer(blob, dtype=np.float32)
            return found

        return await self._cache_thread.call(_get)

    async def put_vectors(self, embedder_id: str, vectors: dict[str, Vectors]) -> None:
        import numpy as np

        def _put() -> None:
            assert self._cache is not None
            with self._cache:
                self._cache.execute("BEGIN")
                self._cache.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                    [(embedder_id, h, v.astype(np.float32).tobytes()) for h, v in vectors.items()],
                )

        await self._cache_thread.call(_put)


def _doc_from_row(row: Sequence[Any]) -> DocState:
    doc_id, source, uri, content_hash, size, mtime_ns, status, attempts, error_count, version = row
    return DocState(
        doc_id=doc_id,
        source=source,
        uri=uri,
        content_hash=content_hash,
        size=size,
        mtime_ns=mtime_ns,
        status=status,
        attempts=attempts,
        error_count=error_count,
        version=version,
    )


def _doc_to_row(d: DocState) -> tuple[object, ...]:
    return (
        d.doc_id,
        d.source,
        d.uri,
        d.content_hash,
        d.size,
        d.mtime_ns,
        d.status,
        d.attempts,
        d.error_count,
        d.version,
    )


def _letter_from_row(row: Sequence[Any]) -> DeadLetter:
    names = (
        "id",
        "kind",
        "input_ref",
        "source",
        "stage",
        "error_type",
        "message",
        "traceback",
        "attempts",
        "created_at",
        "replayed_at",
        "payload",
    )
    return DeadLetter(**dict(zip(names, row, strict=True)))
