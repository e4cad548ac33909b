"""LanceDB vector store: the embedded default, one table of chunks on disk under the home folder.

Every write adds a table version, so writes are batched (one per commit group). ``close()`` indexes
the key columns and, on a small table, compacts and drops old versions; a large table is compacted
by ``optimize()`` (``headwater optimize``), because lancedb's compaction reads the whole table.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError, PermanentError, disk_full
from headwater.models import Chunk, Vectors

if TYPE_CHECKING:
    import pyarrow as pa

TABLE = "chunks"
_SPAN_COLUMNS = ["source_start", "source_end", "page", "page_end"]
_POSITION_COLUMNS = ["uri", "offset", "length", *_SPAN_COLUMNS]
_KEY_COLUMNS = ["doc_id", "chunk_id", "uri", "offset", "length", "chunk_hash", "text", *_SPAN_COLUMNS]
_ROW_COLUMNS = [*_KEY_COLUMNS, "vector"]
_IN_BATCH = 2000
COMPACT_MAX_ROWS = 100_000  # see LanceVectorStore._maintain
CACHE_BYTES = 32 * 1024 * 1024  # lancedb's index and metadata caches, each (see _session)


def _schema(dimensions: int) -> pa.Schema:
    import pyarrow as pa  # this module loads with the pipeline; pyarrow only when a run writes

    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("chunk_id", pa.string()),
            ("uri", pa.string()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
            ("chunk_hash", pa.string()),
            ("text", pa.string()),
            ("vector", pa.list_(pa.float32(), dimensions)),
            *((name, pa.int64()) for name in _SPAN_COLUMNS),
        ]
    )


def _quote(values: Sequence[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _full_disk(path: str) -> Callable[[Exception], OSError | None]:
    """A full disk comes out of the store's thread as an OSError ENOSPC naming the table's
    folder, whatever lance wrapped it in (a RuntimeError "LanceError(IO): No space left on
    device (os error 28), <a path in lance's sources>", an OSError, an error of the index
    builder): the run stops on it with one line; no document is dead-lettered for it."""

    def translate(exc: Exception) -> OSError | None:
        if disk_full(exc) is None:
            return None
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    return translate


class LanceVectorStore:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "lancedb" or not (parts.netloc + parts.path):
            msg = f"vector store URL {url!r} must look like lancedb:///path/to/folder"
            raise ConfigError(msg)
        self.url = url
        self.path = parts.netloc + parts.path
        self._thread = OwnThread("lancedb", _full_disk(self.path))
        self._table: Any = None
        self._writes = 0
        self._spans = False  # the table has the source span columns (see _add_span_columns)

    async def open(self, dimensions: int) -> None:
        os.environ.setdefault("LANCE_LOG", "error")
        self._dimensions = dimensions
        self._writes = 0  # this opening's writes: what close maintains
        await self._thread.call(self._open, dimensions)

    @property
    def table(self) -> Any:
        if self._table is None:
            self._open(self._dimensions)
        return self._table

    def _open(self, dimensions: int) -> None:
        lancedb = _import_lancedb()
        db = lancedb.connect(self.path, session=_session())
        try:
            table = db.open_table(TABLE)
        except ValueError:  # lancedb's "table not found"
            table = db.create_table(TABLE, schema=_schema(dimensions), mode="create", exist_ok=True)
        stored = table.schema.field("vector").type.list_size
        if stored != dimensions:
            msg = (
                f"vector store {self.url} holds {stored}-dimensional vectors but the embedder makes "
                f"{dimensions}; use another --home or --vector-store for this embedder"
            )
            raise ConfigError(msg)
        self._table = table

    def _keys(self) -> list[str]:
        """The key columns this table has: one from before source spans lacks theirs until its
        first write adds them (a reader never writes), and its rows read as spans of None."""
        names = set(self.table.schema.names)
        return [c for c in _KEY_COLUMNS if c in names]

    def _add_span_columns(self) -> None:
        if not self._spans and "source_start" not in self.table.schema.names:
            self.table.add_columns({name: "CAST(NULL AS BIGINT)" for name in _SPAN_COLUMNS})
        self._spans = True

    async def upsert(self, chunks: Sequence[Chunk], vectors: Vectors, *, fresh: bool = False) -> None:
        if not chunks:
            return
        await self._thread.call(self._upsert, chunks, vectors, fresh)

    def _upsert(self, chunks: Sequence[Chunk], vectors: Vectors, fresh: bool) -> None:
        import numpy as np
        import pyarrow as pa

        self._add_span_columns()
        dims = vectors.shape[1]
        data = pa.table(
            {
                "doc_id": [c.doc_id for c in chunks],
                "chunk_id": [c.chunk_id for c in chunks],
                "uri": [c.uri for c in chunks],
                "offset": [c.offset for c in chunks],
                "length": [c.length for c in chunks],
                "chunk_hash": [c.chunk_hash for c in chunks],
                "text": [c.text for c in chunks],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)), dims
                ),
                **{name: [getattr(c, name) for c in chunks] for name in _SPAN_COLUMNS},
            },
            schema=_schema(dims),
        )
        try:
            if fresh:
                self.table.add(data)
            else:
                (
                    self.table.merge_insert("chunk_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(data)
                )
        except OSError as exc:
            if disk_full(exc) is not None:
                raise  # not the documents' fault: the run stops (see _full_disk)
            msg = f"writing {len(chunks)} vectors to {self.url} failed: {exc}"
            raise PermanentError(msg) from exc
        self._writes += 1

    async def update_positions(self, chunks: Sequence[Chunk]) -> None:
        if chunks:
            await self._thread.call(self._update_positions, chunks)

    def _update_positions(self, chunks: Sequence[Chunk]) -> None:
        """Read the stored rows (an indexed lookup), change only those whose position moved and
        merge them back whole. A merge of only uri/offset/length looks cheaper but is not: once a
        fragment carries deletions, lancedb answers it with a full-table join (~1.3 GB at 240k
        rows); a merge of whole rows stays a lookup and writes only the moved rows."""
        self._add_span_columns()
        wanted = {c.chunk_id: c for c in chunks}
        ids = sorted(wanted)
        for start in range(0, len(ids), _IN_BATCH):
            stored = (
                self.table.search()
                .where(f"chunk_id IN ({_quote(ids[start : start + _IN_BATCH])})")
                .select(_ROW_COLUMNS)
                .limit(None)
                .to_arrow()
            )
            moved = _moved_rows(stored, wanted)
            if moved is not None:
                self.table.merge_insert("chunk_id").when_matched_update_all().execute(moved)
                self._writes += 1

    async def delete_stale(self, keep: dict[str, set[str]]) -> None:
        if keep:
            await self._thread.call(self._delete_stale, keep)

    def _delete_stale(self, keep: dict[str, set[str]]) -> None:
        doc_ids = sorted(keep)
        for start in range(0, len(doc_ids), _IN_BATCH):
            part = doc_ids[start : start + _IN_BATCH]
            kept = sorted(chunk_id for doc_id in part for chunk_id in keep[doc_id])
            predicate = f"doc_id IN ({_quote(part)})"
            if kept:
                predicate += f" AND chunk_id NOT IN ({_quote(kept)})"
            self.table.delete(predicate)
            self._writes += 1

    async def search_prefix(self, vector: Vectors, k: int, uri_prefix: str) -> list[tuple[Chunk, float]]:
        return await self.search(vector, k, uri_prefix=uri_prefix)

    async def search(
        self, vector: Vectors, k: int, *, uri_prefix: str | None = None
    ) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks by cosine, read from the table's latest version: a reader
        kept open (the server's) would otherwise keep reading the version it opened, whose files
        a later run's cleanup removes (~0.3 ms). ``uri_prefix`` is a prefilter: k hits whenever
        k chunks match it."""
        import numpy as np

        def _search() -> list[tuple[Chunk, float]]:
            self.table.checkout_latest()
            keys = self._keys()
            search = (
                self.table.search(np.asarray(vector, dtype=np.float32).reshape(-1))
                .metric("cosine")
                .select([*keys, "_distance"])
                .limit(k)
            )
            if uri_prefix:
                search = search.where(f"starts_with(uri, {_quote([uri_prefix])})", prefilter=True)
            rows = search.to_list()
            return [(Chunk(**{c: row[c] for c in keys}), 1.0 - float(row["_distance"])) for row in rows]

        return await self._thread.call(_search)

    async def snapshot(self, since: int | None = None) -> tuple[int, pa.Table | None]:
        """The table's latest version and, unless that is still ``since``, all its rows, vectors
        included: for a reader that searches in memory (the server's ``Searcher``)."""

        def _snapshot() -> tuple[int, pa.Table | None]:
            self.table.checkout_latest()
            version = int(self.table.version)
            if version == since:
                return version, None
            return version, self.table.search().select([*self._keys(), "vector"]).limit(None).to_arrow()

        return await self._thread.call(_snapshot)

    async def scan(self) -> AsyncIterator[Chunk]:
        reader = await self._thread.call(
            lambda: self.table.search().select(self._keys()).limit(None).to_batches(4096)
        )
        while True:
            batch = await self._thread.call(_next_batch, reader)
            if batch is None:
                return
            for row in batch.to_pylist():
                yield Chunk(**row)

    async def count(self) -> int:
        return int(await self._thread.call(self.table.count_rows))

    async def close(self) -> None:
        """Maintain the table if this run wrote, then stop the thread. On a full disk the
        maintenance is left to the next run (the rows written are whole: each write is a table
        version of its own), so a run that filled the disk still closes without a second error."""
        try:
            if self._table is not None and self._writes:
                try:
                    await self._thread.call(self._maintain)
                except OSError as exc:
                    if disk_full(exc) is None:
                        raise
        finally:
            self._thread.shutdown()

    async def optimize(self) -> None:
        """Compact the table, fold new rows into its indexes and drop old versions, whatever its
        size (``headwater optimize``: a maintenance step that reads the whole table)."""
        await self._thread.call(self._optimize)

    def _maintain(self) -> None:
        """After a run that wrote: index the key columns if they are not yet (a merge or lookup
        by chunk_id goes from a full scan to an index lookup: ~100x faster at 300k rows; building
        one reads a single column, ~40 MB at 800k rows), then optimize only a small table.

        lancedb's optimize rewrites every fragment under a million rows together with the new
        ones, reading many at once: at 800k rows it takes 300-700 MB whatever little changed,
        which would make a run's memory grow with the corpus. Above ``COMPACT_MAX_ROWS`` it is
        left to ``headwater optimize``; skipping it costs disk (old versions, deleted rows) and a
        scan of the not-yet-indexed rows, both proportional to what changed since, not the table.
        """
        rows = self._index_keys()
        if 0 < rows <= COMPACT_MAX_ROWS:
            self.table.optimize(cleanup_older_than=timedelta(minutes=1))

    def _optimize(self) -> None:
        self._index_keys()
        self.table.optimize(cleanup_older_than=timedelta(minutes=1))

    def _index_keys(self) -> int:
        """Create the missing BTree indexes on chunk_id and doc_id; returns the row count."""
        rows = int(self.table.count_rows())
        if rows > 0:
            indexed = {tuple(ix.columns) for ix in self.table.list_indices()}
            for column in ("chunk_id", "doc_id"):
                if (column,) not in indexed:
                    self.table.create_index(column, config=_btree())
        return rows


def _import_lancedb() -> Any:
    """lancedb in ~0.5 s instead of ~2.2 s: its import is the fixed cost of every run that
    writes (it holds the GIL while the first documents are prepared) and of every query. Three
    parts of it serve nothing a local table uses, and each is put off, not changed."""
    # One import at a time: a second thread (a server warming its query index while a job opens
    # its vector store) found the module half-initialized in sys.modules and took it as loaded
    # ("partially initialized module 'lancedb' has no attribute 'connect'"); the patches below
    # are process-wide too.
    with _IMPORTING:
        if "lancedb" in sys.modules:
            return sys.modules["lancedb"]
        _defer_namespace_client()
        with _overrides_as_on_python_312(), _pydantic_builds_deferred():
            import lancedb
        return lancedb


_IMPORTING = threading.Lock()


@contextlib.contextmanager
def _overrides_as_on_python_312() -> Iterator[None]:
    """On Python < 3.12 lancedb marks its methods with the ``overrides`` package, which checks
    each one against its base classes as the module loads (~0.15 s); on 3.12+ it uses
    ``typing.override``, which only marks them. The same marker here, for lancedb's import only."""
    if sys.version_info >= (3, 12) or importlib.util.find_spec("overrides") is None:
        yield
        return
    import overrides
    from typing_extensions import override

    checked = overrides.override
    overrides.override = override  # type: ignore[assignment]  # the 3.12 marker, for this import only
    try:
        yield
    finally:
        overrides.override = checked


@contextlib.contextmanager
def _pydantic_builds_deferred() -> Iterator[None]:
    """lance_namespace defines ~100 pydantic models at import; each built its validator then
    (~0.15 s in all). Models created meanwhile get pydantic's own ``defer_build``: the validator
    is built on first use, which for a local table is never."""
    from pydantic import BaseModel

    config = BaseModel.model_config
    if "defer_build" in config:
        yield
        return
    config["defer_build"] = True
    try:
        yield
    finally:
        del config["defer_build"]


def _defer_namespace_client() -> None:
    """Load the REST namespace client's package lazily. lancedb imports its models at start-up,
    and the package's ``__init__`` also builds every API class (pydantic-validated methods):
    1.2 of lancedb's 2.2 s of import, for a client a local table never uses. Its submodules
    still import normally; the first top-level name anyone asks for runs the real ``__init__``."""
    name = "lance_namespace_urllib3_client"
    if name in sys.modules or "lancedb" in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def load_on_first_use(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        del module.__getattr__
        loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = load_on_first_use  # type: ignore[method-assign]
    sys.modules[name] = module


def _session() -> Any:
    """Bounded caches. lancedb's default session keeps the metadata of every table version it
    saw, and each version lists every fragment: a cold run that appends one fragment per group
    grew by ~140 MB over 100k documents (O(writes x fragments)); 32 MB caps it at no cost in speed."""
    lancedb = _import_lancedb()

    return lancedb.Session(index_cache_size_bytes=CACHE_BYTES, metadata_cache_size_bytes=CACHE_BYTES)


def _btree() -> Any:
    from lancedb.index import BTree

    return BTree()


def _moved_rows(stored: pa.Table, wanted: dict[str, Chunk]) -> pa.Table | None:
    """The stored rows whose position (uri, offsets, source span) differs from ``wanted``, with
    the new values."""
    import pyarrow as pa

    ids = stored["chunk_id"].to_pylist()
    keys = zip(*(stored[c].to_pylist() for c in _POSITION_COLUMNS), strict=True)
    picks, positions = [], []
    for i, (chunk_id, key) in enumerate(zip(ids, keys, strict=True)):
        new = wanted[chunk_id]
        if tuple(getattr(new, c) for c in _POSITION_COLUMNS) != key:
            picks.append(i)
            positions.append(new)
    if not picks:
        return None
    rows = stored.take(picks)
    for name in _POSITION_COLUMNS:
        kind = pa.string() if name == "uri" else pa.int64()
        values = pa.array([getattr(c, name) for c in positions], kind)
        rows = rows.set_column(rows.schema.get_field_index(name), name, values)
    return rows


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
