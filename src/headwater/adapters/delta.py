"""Offline feature store on Delta Lake: ``delta:///PATH`` (a local folder) or ``delta+s3://BUCKET/PREFIX``.

One Delta table per (dataset, feature set), ``ROOT/DATASET/FEATURE_SET`` (no ``key=value``
above the table: polars' own Delta reader would take it for a partition column), partitioned by
``date`` like the Parquet store's folders, each row carrying the ``_part`` the Parquet store
gives it (``part-SCOPE-000042.parquet``), so ``latest_rows``, ``features export`` and a release
read it unchanged.

A write is one Delta transaction: ``overwrite`` with the predicate ``_part = 'PART'`` removes
the part's earlier rows and adds the new ones in the same commit, so a replayed batch or a
re-run replaces its part and never duplicates it; a crash before the commit leaves the previous
version, whole (the commit is the atomic creation of the next log entry). ``_part`` is the
table's first column, so the per-file statistics cover it and the predicate only opens the files
of the part it replaces (a first write opens none). A MERGE on the row key was the other choice:
it has no key that fits every dataset (a part replaced wholesale is the Parquet store's
semantics) and it joins the batch with the whole table on every write.

Small files: every batch is one commit (a table version) and at least one file per day it
spans. ``optimize`` compacts the files (``DeltaTable.optimize.compact``), checkpoints the log
and vacuums the files no recent version reads; run it now and then (a maintenance step that
rewrites the table, like ``headwater optimize`` for the vector index).

On S3 the credentials, region and endpoint come from the environment as the AWS SDKs read them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
``AWS_ALLOW_HTTP``). S3 has no atomic rename: unless the environment names a locking provider or
conditional puts (``AWS_S3_LOCKING_PROVIDER``, ``AWS_CONDITIONAL_PUT``), commits use
``AWS_S3_ALLOW_UNSAFE_RENAME``, safe for one writer per table (one home's runs, one at a time).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError, RetryableError, StoreUnavailable, disk_full

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHAPE = "delta:///ABSOLUTE/PATH or delta+s3://BUCKET/PREFIX"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _reason(exc: BaseException) -> str:
    """A vendor message on one line, without the terminal colours delta-rs puts in it."""
    return " ".join(_ANSI.sub("", str(exc)).replace("↳", "").split())[:300]


def _date_strings(rows: pl.DataFrame) -> pl.DataFrame:
    """``date`` as the partition value the Parquet store names its folders by (``1970-01-02``):
    an integer is days since the epoch (``with_date``), a string is kept."""
    if rows.schema["date"] == pl.String:
        return rows
    return rows.with_columns(pl.col("date").cast(pl.Int32).cast(pl.Date).cast(pl.String))


class DeltaOfflineStore:
    """Implements ``ports.OfflineFeatureStore`` with one Delta table per (dataset, feature set)."""

    def __init__(self, url: str) -> None:
        self.url = url
        root, self._remote = _root_from_url(url)
        self.root: Path | str = root if self._remote else Path(root)
        self._options = _storage_options() if self._remote else None
        self._thread = OwnThread("delta", self._translate)
        self._tables: dict[str, Any] = {}

    def _uri(self, dataset: str, feature_set: str) -> str:
        if self._remote:
            return f"{self.root}/{dataset}/{feature_set}"
        return str(Path(self.root, dataset, feature_set))

    def _translate(self, exc: Exception) -> BaseException | None:
        from deltalake.exceptions import CommitFailedError

        if disk_full(exc) is not None:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root))
        if isinstance(exc, CommitFailedError):  # another writer committed the same version first
            return RetryableError(f"offline store {self.url}: {_reason(exc)}")
        if isinstance(exc, OSError):
            msg = f"offline store {self.url}: {_reason(exc)}"
            return StoreUnavailable(msg) if self._remote else RetryableError(msg)
        return None

    def _table(self, uri: str) -> Any:
        """The table at ``uri`` brought up to date, or None when there is none yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        table = self._tables.get(uri)
        if table is not None:
            table.update_incremental()
            return table
        try:
            table = DeltaTable(uri, storage_options=self._options)
        except TableNotFoundError:
            return None
        self._tables[uri] = table
        return table

    async def write(self, dataset: str, feature_set: str, part: str, rows: pl.DataFrame) -> None:
        await self._thread.call(self._write, self._uri(dataset, feature_set), part, rows)

    def _write(self, uri: str, part: str, rows: pl.DataFrame) -> None:
        from deltalake import write_deltalake

        table = self._table(uri)
        predicate = f"_part = {_quote(f'{part}.parquet')}"
        if rows.height == 0:
            # The part is now empty: rows an earlier run wrote under its name go (no commit when
            # there are none), so a re-run in other batches leaves nothing stale behind.
            if table is not None:
                table.delete(predicate=predicate)
            return
        frame = self._fit(_date_strings(rows), table)
        frame = frame.select(pl.lit(f"{part}.parquet").alias("_part"), pl.exclude("_part"))
        if table is None:
            write_deltalake(uri, frame, partition_by=["date"], mode="append", storage_options=self._options)
            return
        write_deltalake(
            table, frame, partition_by=["date"], mode="overwrite", predicate=predicate, schema_mode="merge"
        )

    @staticmethod
    def _fit(rows: pl.DataFrame, table: Any) -> pl.DataFrame:
        """Columns Delta cannot store as they are: a column of nulls only (polars' ``Null``
        type) takes the table's type for it, or is left out (a later read fills it with nulls,
        as the Parquet store's relaxed concatenation does)."""
        nulls = [name for name, dtype in rows.schema.items() if dtype == pl.Null]
        if not nulls:
            return rows
        known = _schema(table) if table is not None else pl.Schema()
        typed = [pl.col(n).cast(known[n]) for n in nulls if n in known]
        return rows.with_columns(typed).drop([n for n in nulls if n not in known])

    async def read(self, dataset: str, feature_set: str) -> pl.DataFrame:
        return await self._thread.call(self._read, self._uri(dataset, feature_set))

    def _read(self, uri: str) -> pl.DataFrame:
        table = self._table(uri)
        if table is None:
            return pl.DataFrame()
        frame = pl.from_arrow(table.to_pyarrow_table())
        assert isinstance(frame, pl.DataFrame)
        if frame.height == 0:
            return pl.DataFrame()
        # The Parquet store's shape: the data columns, then date and _part, by date then part.
        frame = frame.select(pl.exclude("date", "_part"), "date", "_part")
        return frame.sort("date", "_part", maintain_order=True)

    async def prune(self, dataset: str, feature_set: str, scope: str, last_batch: int) -> int:
        return await self._thread.call(self._prune, self._uri(dataset, feature_set), scope, last_batch)

    def _prune(self, uri: str, scope: str, last_batch: int) -> int:
        """Delete the scope's parts numbered above ``last_batch`` in one commit; the count is
        the Parquet store's: one per part and day (its files)."""
        table = self._table(uri)
        if table is None:
            return 0
        stored = pl.from_arrow(table.to_pyarrow_table(columns=["date", "_part"]))
        assert isinstance(stored, pl.DataFrame)
        prefix = f"part-{scope}-"
        parts = stored.unique().filter(pl.col("_part").str.starts_with(prefix))
        number = pl.col("_part").str.strip_suffix(".parquet").str.split("-").list.last()
        beyond = parts.filter(number.cast(pl.Int64, strict=False) > last_batch)
        if beyond.height == 0:
            return 0
        names = ", ".join(_quote(p) for p in beyond["_part"].unique().sort())
        table.delete(predicate=f"_part IN ({names})")
        return beyond.height

    async def optimize(self, dataset: str, feature_set: str) -> dict[str, Any]:
        """Compact the table's small files (one or more per batch), checkpoint its log and
        vacuum what no version of the last week reads: a maintenance step that rewrites the
        table; readers of older versions keep working through the retention period."""
        return await self._thread.call(self._optimize, self._uri(dataset, feature_set))

    def _optimize(self, uri: str) -> dict[str, Any]:
        table = self._table(uri)
        if table is None:
            return {}
        metrics: dict[str, Any] = table.optimize.compact()
        table.create_checkpoint()
        metrics["vacuumed"] = len(table.vacuum(dry_run=False))
        return metrics

    def close(self) -> None:
        """Let the writer thread go (a later call starts another)."""
        self._tables.clear()
        self._thread.shutdown()


def _schema(table: Any) -> pl.Schema:
    import pyarrow as pa

    empty = pl.from_arrow(pa.schema(table.schema().to_arrow()).empty_table())
    assert isinstance(empty, pl.DataFrame)
    return empty.schema


def _root_from_url(url: str) -> tuple[str, bool]:
    """The table root (a local path or ``s3://BUCKET/PREFIX``) and whether it is remote."""
    parts = urlsplit(url)
    shown = url if "@" not in parts.netloc else f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}"
    msg = f"offline store URL must be {_SHAPE}, got {shown!r}"
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(msg)
    if parts.scheme == "delta":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ConfigError(msg)
        return str(Path(parts.path)), False
    if parts.scheme == "delta+s3":
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not bucket or ":" in bucket:
            raise ConfigError(msg)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", True
    raise ConfigError(msg)


def _storage_options() -> dict[str, str]:
    """What the environment does not say already; credentials and endpoint stay there."""
    options: dict[str, str] = {}
    if not any(os.environ.get(k) for k in ("AWS_S3_LOCKING_PROVIDER", "AWS_CONDITIONAL_PUT")):
        options["AWS_S3_ALLOW_UNSAFE_RENAME"] = os.environ.get("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    return options
