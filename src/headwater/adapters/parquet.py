"""Offline feature store: Parquet files partitioned hive-style, ``DATASET/feature_set=X/date=D/PART.parquet``.

Each part is written to a temporary file in the same folder, fsynced and ``os.replace``d into
place, so a reader never sees half a file and a crash leaves either the old or the new part.
Part names are deterministic (scope + batch number), so replaying a batch replaces its parts.
"""

from __future__ import annotations

import asyncio
import errno
import os
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl

from headwater.errors import ConfigError, RetryableError, disk_full

EPOCH = date(1970, 1, 1)


def _day(value: object) -> str:
    """A partition value: an ISO date string as is, an integer as days since the epoch (UTC)."""
    if isinstance(value, int):
        return (EPOCH + timedelta(days=value)).isoformat()
    return str(value)


def _by_day(rows: pl.DataFrame) -> list[tuple[object, pl.DataFrame]]:
    """Rows split by their ``date`` column (dropped); a batch within one day (the usual case) is
    written as is, without the copy ``partition_by`` makes."""
    dates = rows["date"]
    if dates.n_unique() == 1:
        return [(dates[0], rows.drop("date"))]
    groups = rows.partition_by("date", as_dict=True, maintain_order=True, include_key=False)
    return [(day, group) for (day,), group in groups.items()]


def root_from_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme in ("file", "parquet"):
        return Path(parts.path)
    if len(parts.scheme) <= 1:
        return Path(url)
    msg = f"offline store URL must be a folder or file:///folder, got {url!r}"
    raise ConfigError(msg)


class ParquetOfflineStore:
    """Implements ``ports.OfflineFeatureStore`` on a local folder."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = root_from_url(url)

    def _folder(self, dataset: str, feature_set: str) -> Path:
        return self.root / dataset / f"feature_set={feature_set}"

    async def write(self, dataset: str, feature_set: str, part: str, rows: pl.DataFrame) -> None:
        await asyncio.to_thread(self._write, dataset, feature_set, part, rows)

    def _write(self, dataset: str, feature_set: str, part: str, rows: pl.DataFrame) -> None:
        """The part's new files first (durable), then its files of days it no longer has: a
        replay of a batch cut otherwise (another batch size, a resumed run) may cover fewer days,
        or none; a crash in between leaves old rows that the next replay removes."""
        folder = self._folder(dataset, feature_set)
        try:
            written = set()
            for day, group in _by_day(rows) if rows.height else []:
                folder = self._folder(dataset, feature_set) / f"date={_day(day)}"
                self._write_part(folder, part, group)
                written.add(folder)
            for old in self._folder(dataset, feature_set).glob(f"date=*/{part}.parquet"):
                if old.parent not in written:
                    old.unlink()
        except Exception as exc:
            if disk_full(exc) is not None:  # polars says it in its own words: the folder, as the OS would
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from exc
            if not isinstance(exc, OSError):
                raise
            msg = f"offline store {self.root}: {exc}"
            raise RetryableError(msg) from exc

    @staticmethod
    def _write_part(folder: Path, part: str, rows: pl.DataFrame) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{part}.parquet"
        tmp = folder / f".{part}.parquet.tmp"
        try:
            rows.write_parquet(tmp, statistics=False, compression="lz4")
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # half a part (a full disk): its space goes back now
            raise
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def read(self, dataset: str, feature_set: str) -> pl.DataFrame:
        return await asyncio.to_thread(self._read, dataset, feature_set)

    def _read(self, dataset: str, feature_set: str) -> pl.DataFrame:
        files = sorted(self._folder(dataset, feature_set).glob("date=*/*.parquet"))
        if not files:
            return pl.DataFrame()
        frames = [
            pl.read_parquet(f).with_columns(
                pl.lit(f.parent.name.partition("=")[2]).alias("date"), pl.lit(f.name).alias("_part")
            )
            for f in files
        ]
        return pl.concat(frames, how="diagonal_relaxed")

    async def prune(self, dataset: str, feature_set: str, scope: str, last_batch: int) -> int:
        return await asyncio.to_thread(self._prune, dataset, feature_set, scope, last_batch)

    def _prune(self, dataset: str, feature_set: str, scope: str, last_batch: int) -> int:
        removed = 0
        for path in self._folder(dataset, feature_set).glob(f"date=*/part-{scope}-*.parquet"):
            batch = int(path.stem.rsplit("-", 1)[1])
            if batch > last_batch:
                path.unlink()
                removed += 1
        return removed
