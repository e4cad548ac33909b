"""FAISS vector store (``faiss:///PATH``): exact cosine search in memory, the rows in SQLite.

The index is ``IndexIDMap2(IndexFlatIP(d))`` over L2-normalised vectors: the inner product is
the cosine, and every search is exact, so it ranks as LanceDB's flat search does. No ANN index
(IVF, HNSW): IVF must be trained on a corpus that here grows document by document, HNSW cannot
delete, and both lose recall without saying so; a flat scan costs ~10 ms per 100k 384-d vectors
on one core (~0.1 s a query at a million), the scale an embedded store serves.

``PATH/chunks.db`` (SQLite, WAL, synchronous=FULL) is the source of truth: one row per chunk,
its metadata, text and vector (a float32 BLOB as embedded), keyed by an ``INTEGER PRIMARY KEY``
that is its FAISS id; a ``meta`` table holds the dimensionality, a store id and a ``version``
bumped in the transaction of every write that changes the vectors. The FAISS index holds ids
and vectors only, and is derived: whatever it cannot prove current is rebuilt from the rows.

Crash story: a write commits to SQLite (durable when the call returns), then updates the
index in memory. ``close()`` saves the index to ``PATH/index.faiss`` and then its record to
``PATH/index.version`` (store id, version, size and CRC of that file), each written to a temp
file, fsynced and renamed. ``open`` loads the file only when its record matches the database
and the file; after a kill -9 (the record lags), a torn or foreign file (size or CRC differ)
or none at all, it rebuilds the index from the rows in batches. A reader in another process
(the server's queries) compares the version before every read and rebuilds when a writer moved it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from headwater.adapters._thread import OwnThread
from headwater.adapters.sqlite.connection import connect, full_disk
from headwater.errors import ConfigError, PermanentError, RetryableError, disk_full
from headwater.models import Chunk, Vectors

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DB_FILE = "chunks.db"
INDEX_FILE = "index.faiss"
RECORD_FILE = "index.version"
_SPAN_COLUMNS = ["source_start", "source_end", "page", "page_end"]
_POSITION_COLUMNS = ["uri", "offset", "length", *_SPAN_COLUMNS]
_KEY_COLUMNS = ["doc_id", "chunk_id", "uri", "offset", "length", "chunk_hash", "text", *_SPAN_COLUMNS]
_KEYS = ", ".join(f'"{c}"' for c in _KEY_COLUMNS)
_BATCH = 4096  # rows per read of a rebuild or a scan
_IN_BATCH = 500  # values per IN (...)
_CRC_BLOCK = 1 << 20

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS chunks (
        id INTEGER PRIMARY KEY,
        doc_id TEXT NOT NULL,
        chunk_id TEXT NOT NULL UNIQUE,
        uri TEXT NOT NULL,
        "offset" INTEGER NOT NULL,
        length INTEGER NOT NULL,
        chunk_hash TEXT NOT NULL,
        text TEXT NOT NULL,
        source_start INTEGER,
        source_end INTEGER,
        page INTEGER,
        page_end INTEGER,
        vector BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_doc_id ON chunks (doc_id)",
    "CREATE INDEX IF NOT EXISTS chunks_uri ON chunks (uri)",  # prefix searches: a range scan
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL)",
]


def _full_disk(folder: Path) -> Callable[[Exception], OSError | None]:
    """A full disk comes out of the store's thread as an OSError ENOSPC naming its folder,
    whether SQLite said it ("database or disk is full", an I/O error on a full disk) or the
    index file's write did: the run stops on it with one line; no document is dead-lettered."""

    def translate(exc: Exception) -> OSError | None:
        if full_disk(exc, folder / DB_FILE) is None and disk_full(exc) is None:
            return None
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    return translate


class FaissVectorStore:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "faiss" or parts.netloc or not parts.path.startswith("/"):
            msg = f"vector store URL {url!r} must look like faiss:///absolute/path/to/folder"
            raise ConfigError(msg)
        self.url = url
        self.path = Path(parts.path)
        self._thread = OwnThread("faiss", _full_disk(self.path))
        self._db: sqlite3.Connection | None = None
        self._dimensions = 0
        self._store = ""  # the database's id: an index file of another database never matches
        self._index: Any = None  # faiss.IndexIDMap2, current as of self._version
        self._version = -1
        self._saved = -1  # the version of the index file on disk, as far as this instance knows

    async def open(self, dimensions: int) -> None:
        await self._thread.call(self._open, dimensions)

    def _open(self, dimensions: int) -> sqlite3.Connection:
        if self._db is not None and self._dimensions == dimensions:
            return self._db
        self._disconnect()
        self.path.mkdir(parents=True, exist_ok=True)
        db = connect(self.path / DB_FILE, "FULL")
        try:
            stored, self._store = _init_schema(db, dimensions)
        except BaseException:
            db.close()
            raise
        if stored != dimensions:
            db.close()
            msg = (
                f"vector store {self.url} holds {stored}-dimensional vectors but the embedder makes "
                f"{dimensions}; use another --home or --vector-store for this embedder"
            )
            raise ConfigError(msg)
        self._db, self._dimensions = db, dimensions
        with self._reading() as db:
            version = _version(db)
            self._index = self._load(db, version)
            if self._index is not None:
                self._version = self._saved = version
            else:
                self._index, self._version = self._rebuild(db), version
        return db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if not self._dimensions:
            msg = f"vector store {self.url} was used before open()"
            raise ConfigError(msg)
        return self._open(self._dimensions)  # a closed store used again: reopened as it was

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the version and the rows it reads are one snapshot (WAL)."""
        db = self.db
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, rolled back on any error; SQLite's errors as the engine's."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if full_disk(exc, self.path / DB_FILE) is not None:
                raise  # not the documents' fault: the run stops (see _full_disk)
            msg = f"{what} in {self.url} failed: {exc}"
            if "locked" in str(exc) or "busy" in str(exc):
                raise RetryableError(msg) from exc
            raise PermanentError(msg) from exc

    def _bump(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Move the version on (in the write's transaction): the old and the new one."""
        old = _version(db)
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (old + 1,))
        return old, old + 1

    def _current(self, db: sqlite3.Connection) -> Any:
        """The index as of the database's version, rebuilt when a write (of another process, or
        one this instance could not apply) moved the version past it."""
        version = _version(db)
        if self._index is None or version != self._version:
            self._index = None  # let the stale one go before its successor is built
            self._index, self._version = self._rebuild(db), version
        return self._index

    def _rebuild(self, db: sqlite3.Connection) -> Any:
        import faiss
        import numpy as np

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dimensions))
        width = 4 * self._dimensions
        rows = db.execute("SELECT id, vector FROM chunks")
        while batch := rows.fetchmany(_BATCH):
            ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
            blob = bytearray().join(row[1] for row in batch)
            if len(blob) != width * len(batch):
                msg = f"vector store {self.url} holds a vector that is not {self._dimensions} float32"
                raise PermanentError(msg)
            matrix = np.frombuffer(blob, dtype=np.float32).reshape(len(batch), self._dimensions)
            faiss.normalize_L2(matrix)
            index.add_with_ids(matrix, ids)
        return index

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        if len(chunks):
            await self._thread.call(self._upsert, chunks, vectors, fresh)

    def _upsert(self, chunks: Sequence[Chunk], vectors: Vectors, fresh: bool) -> None:
        """Existing chunk ids keep their row id (the FAISS id) and get new values; new ones get
        ids after the largest. ``fresh`` tries a plain insert first and falls back to the merge
        if it was wrong: a duplicate row would make the index disagree with the table."""
        import faiss
        import numpy as np

        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.shape != (len(chunks), self._dimensions):
            msg = f"{len(chunks)} chunks came with vectors of shape {matrix.shape} for {self.url}"
            raise PermanentError(msg)
        last = {c.chunk_id: i for i, c in enumerate(chunks)}  # a repeated id: the last one wins
        if len(last) < len(chunks):
            keep = sorted(last.values())
            chunks, matrix = [chunks[i] for i in keep], matrix[keep]
        with self._writing(f"writing {len(chunks)} vectors") as db:
            old, new = self._bump(db)
            ids, replaced = _write_rows(db, chunks, matrix, fresh)
        index, self._index = self._index, None  # unknown until the update below is whole
        if index is None or old != self._version:
            return  # the next read rebuilds it
        if replaced:
            index.remove_ids(faiss.IDSelectorBatch(np.asarray(replaced, dtype=np.int64)))
        unit = matrix.copy()
        faiss.normalize_L2(unit)
        index.add_with_ids(unit, np.asarray(ids, dtype=np.int64))
        self._index, self._version = index, new

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        if chunks:
            await self._thread.call(self._update_positions, chunks)

    def _update_positions(self, chunks: Sequence[Chunk]) -> None:
        """Rows only: the index holds ids and vectors, neither of which moves, so the version
        stays (a reader in another process need not rebuild for it)."""
        sets = ", ".join(f'"{c}" = ?' for c in _POSITION_COLUMNS)
        rows = [(*(getattr(c, name) for name in _POSITION_COLUMNS), c.chunk_id) for c in chunks]
        with self._writing(f"moving {len(chunks)} chunks") as db:
            db.executemany(f"UPDATE chunks SET {sets} WHERE chunk_id = ?", rows)

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        if keep:
            await self._thread.call(self._delete_stale, keep)

    def _delete_stale(self, keep: dict[str, set[str]]) -> None:
        import faiss
        import numpy as np

        doc_ids = sorted(keep)
        with self._writing(f"deleting stale chunks of {len(keep)} documents") as db:
            stale: list[int] = []
            for start in range(0, len(doc_ids), _IN_BATCH):
                docs = doc_ids[start : start + _IN_BATCH]
                marks = ",".join("?" * len(docs))
                query = f"SELECT id, doc_id, chunk_id FROM chunks WHERE doc_id IN ({marks})"
                stale += [i for i, doc, chunk in db.execute(query, docs) if chunk not in keep[doc]]
            if not stale:
                return
            old, new = self._bump(db)
            for start in range(0, len(stale), _IN_BATCH):
                ids = stale[start : start + _IN_BATCH]
                db.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids)
        index, self._index = self._index, None
        if index is None or old != self._version:
            return
        index.remove_ids(faiss.IDSelectorBatch(np.asarray(stale, dtype=np.int64)))
        self._index, self._version = index, new

    async def search(self, vector: Vectors, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks by cosine (1.0: the same direction), nearest first."""
        return await self._thread.call(self._search, vector, k, None)

    async def search_prefix(self, vector: Vectors, k: int, uri_prefix: str) -> list[tuple[Chunk, float]]:
        """A prefilter: FAISS ranks only the ids whose uri starts with ``uri_prefix`` (a range
        of the uri index), so k hits whenever k chunks match."""
        return await self._thread.call(self._search, vector, k, uri_prefix or None)

    def _search(self, vector: Vectors, k: int, uri_prefix: str | None) -> list[tuple[Chunk, float]]:
        import faiss
        import numpy as np

        query = np.array(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self._dimensions:
            msg = f"a {query.shape[1]}-dimensional query for {self.url}, which holds {self._dimensions}"
            raise PermanentError(msg)
        faiss.normalize_L2(query)
        with self._reading() as db:
            index = self._current(db)
            size, params, selector = index.ntotal, None, None
            if uri_prefix is not None:
                ids = _ids_under(db, uri_prefix)
                if not len(ids):
                    return []
                size, selector = len(ids), faiss.IDSelectorBatch(ids)
                params = faiss.SearchParameters()
                params.sel = selector  # params hold no reference: ``selector`` keeps it alive
            k = min(k, size)
            if k <= 0:
                return []
            scores, labels = index.search(query, k, params=params)
            hits = [(int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True) if i >= 0]
            rows = _chunks_by_id(db, [i for i, _ in hits])
        return [(rows[i], score) for i, score in hits if i in rows]

    async def count(self) -> int:
        def _count() -> int:
            with self._reading() as db:
                if self._index is not None and _version(db) == self._version:
                    return int(self._index.ntotal)
                return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

        return await self._thread.call(_count)

    async def scan(self) -> AsyncIterator[Chunk]:
        """Every chunk, a page of rows at a time by id (memory stays flat however large)."""
        after = 0
        while True:
            page = await self._thread.call(self._page, after)
            if not page:
                return
            for _, chunk in page:
                yield chunk
            after = page[-1][0]

    def _page(self, after: int) -> list[tuple[int, Chunk]]:
        query = f"SELECT id, {_KEYS} FROM chunks WHERE id > ? ORDER BY id LIMIT ?"
        return [(row[0], _chunk(row[1:])) for row in self.db.execute(query, (after, _BATCH))]

    async def optimize(self) -> None:
        """Reclaim deleted rows' space (VACUUM keeps the row ids, so the FAISS ids hold) and
        save the index file, so the next open loads instead of rebuilding."""

        def _optimize() -> None:
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with self._reading() as db:
                self._current(db)
            self._save()

        await self._thread.call(_optimize)

    async def close(self) -> None:
        """Save the index if the file lags what this instance holds (it wrote or rebuilt), then
        close the database. A full disk leaves the file to a later run (it is only a cache: the
        next open rebuilds), so a run that filled the disk still closes without a second error."""
        try:
            await self._thread.call(self._close)
        finally:
            self._thread.shutdown()

    def _close(self) -> None:
        try:
            if self._db is not None and self._index is not None and self._saved != self._version:
                with self._reading() as db:
                    current = _version(db) == self._version
                if current:
                    self._save()
        except (OSError, RuntimeError) as exc:
            if disk_full(exc) is None:
                raise
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        db, self._db, self._index, self._version, self._saved = self._db, None, None, -1, -1
        if db is not None:
            db.close()

    def _save(self) -> None:
        """The index file, then its record, each atomically (temp file, fsync, rename)."""
        import faiss

        crc, size = 0, 0
        with _replacing(self.path / INDEX_FILE) as out:

            def write(data: bytes) -> int:
                nonlocal crc, size
                out.write(data)
                crc, size = zlib.crc32(data, crc), size + len(data)
                return len(data)

            untyped: Any = faiss  # PyCallbackIOWriter is missing from faiss's stubs
            faiss.write_index(self._index, untyped.PyCallbackIOWriter(write))
        record = {
            "store": self._store,
            "version": self._version,
            "dimensions": self._dimensions,
            "rows": int(self._index.ntotal),
            "bytes": size,
            "crc32": crc,
        }
        with _replacing(self.path / RECORD_FILE) as out:
            out.write(json.dumps(record).encode())
        self._saved = self._version

    def _load(self, db: sqlite3.Connection, version: int) -> Any:
        """The saved index if its record says it is this database at ``version`` and the file
        is the one recorded (size, CRC: a torn or foreign file is never parsed), else None."""
        import faiss

        index_path = self.path / INDEX_FILE
        try:
            record = json.loads((self.path / RECORD_FILE).read_bytes())
            expected = {"store": self._store, "version": version, "dimensions": self._dimensions}
            if any(record.get(key) != value for key, value in expected.items()):
                return None
            if index_path.stat().st_size != record["bytes"] or _crc32(index_path) != record["crc32"]:
                return None
            index = faiss.read_index(str(index_path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
            return None
        rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if (
            not isinstance(index, faiss.IndexIDMap2)
            or index.d != self._dimensions
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
            or index.ntotal != rows
        ):
            return None
        return index


_INSERT = f"INSERT INTO chunks (id, {_KEYS}, vector) VALUES ({','.join('?' * (len(_KEY_COLUMNS) + 2))})"
_UPSERT = f"{_INSERT} ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f'"{c}" = excluded."{c}"' for c in [*_KEY_COLUMNS, "vector"]
)


def _write_rows(
    db: sqlite3.Connection, chunks: Sequence[Chunk], matrix: Vectors, fresh: bool
) -> tuple[list[int], list[int]]:
    """Write the rows; each chunk's row id, and those of them that replaced a stored row.
    Existing chunk ids keep their row id (the FAISS id); new ones get ids after the largest.
    ``fresh`` tries a plain insert first and falls back to the merge if the promise did not
    hold: a second row for a chunk id would make the index disagree with the table."""
    (largest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()
    if fresh:
        ids = list(range(largest + 1, largest + 1 + len(chunks)))
        db.execute("SAVEPOINT fresh")
        try:
            db.executemany(_INSERT, _rows(ids, chunks, matrix))
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO fresh")
            db.execute("RELEASE fresh")
        else:
            db.execute("RELEASE fresh")
            return ids, []
    existing: dict[str, int] = {}
    names = [c.chunk_id for c in chunks]
    for start in range(0, len(names), _IN_BATCH):
        part = names[start : start + _IN_BATCH]
        query = f"SELECT chunk_id, id FROM chunks WHERE chunk_id IN ({','.join('?' * len(part))})"
        existing.update(db.execute(query, part).fetchall())
    ids, replaced = [], []
    for name in names:
        found = existing.get(name)
        if found is None:
            largest += 1
            found = largest
        else:
            replaced.append(found)
        ids.append(found)
    db.executemany(_UPSERT, _rows(ids, chunks, matrix))
    return ids, replaced


def _rows(ids: list[int], chunks: Sequence[Chunk], matrix: Vectors) -> Iterator[tuple[Any, ...]]:
    for row_id, chunk, vector in zip(ids, chunks, matrix, strict=True):
        yield (row_id, *(getattr(chunk, name) for name in _KEY_COLUMNS), vector.tobytes())


def _init_schema(db: sqlite3.Connection, dimensions: int) -> tuple[int, str]:
    """Create the tables if new: the stored dimensionality and store id."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        initial = {"dimensions": dimensions, "version": 0, "store": uuid.uuid4().hex}
        db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", initial.items())
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return int(meta["dimensions"]), str(meta["store"])


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])


def _chunk(row: Sequence[Any]) -> Chunk:
    return Chunk(**dict(zip(_KEY_COLUMNS, row, strict=True)))


def _chunks_by_id(db: sqlite3.Connection, ids: list[int]) -> dict[int, Chunk]:
    found: dict[int, Chunk] = {}
    for start in range(0, len(ids), _IN_BATCH):
        part = ids[start : start + _IN_BATCH]
        query = f"SELECT id, {_KEYS} FROM chunks WHERE id IN ({','.join('?' * len(part))})"
        found.update((row[0], _chunk(row[1:])) for row in db.execute(query, part))
    return found


def _ids_under(db: sqlite3.Connection, prefix: str) -> npt.NDArray[np.int64]:
    """The ids of the rows whose uri starts with ``prefix``: a range of the uri index (SQLite
    compares text as UTF-8 bytes, which orders as code points), bound as parameters, so quotes,
    ``%`` and ``_`` are only characters."""
    import numpy as np

    end = _after(prefix)
    if end is None:
        rows = db.execute("SELECT id FROM chunks WHERE uri >= ?", (prefix,))
    else:
        rows = db.execute("SELECT id FROM chunks WHERE uri >= ? AND uri < ?", (prefix, end))
    return np.fromiter((row[0] for row in rows), dtype=np.int64)


def _after(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates are no characters: skip to the next one
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as file:
        while block := file.read(_CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Any]:
    """A file written whole or not at all: a temp file beside it (mkstemp's mode 0600 widened
    to the database's), fsynced, renamed over it, and the folder fsynced so the rename survives
    a power cut."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, stat.S_IMODE((path.parent / DB_FILE).stat().st_mode))  # as readable as the rows
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
