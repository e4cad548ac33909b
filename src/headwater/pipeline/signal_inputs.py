"""Signal input files → decoded micro-batches, resumable at (file index, row offset).

A micro-batch never spans two files and its boundaries depend only on the input and
``micro_batch_events``, so a resumed run replays exactly the batches a clean run would have.
A file is cut every ``micro_batch_events`` records, except that its last batch also takes a rest
of at most an eighth of a batch (:func:`tail_allowance`) rather than leave it a batch of its own:
a batch has fixed costs (~0.04 s of engine, a write), which a batch of a few thousand events
paid in full. Positions count records: lines for JSONL/CSV (header excluded), rows for Parquet.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.errors import ConfigError
from headwater.featuresets import Expectations
from headwater.models import sha256_hex
from headwater.stages.decode import (
    DecodeLimits,
    InvalidRecord,
    decode_arrow,
    decode_csv_lines,
    decode_json_lines,
)
from headwater.stages.expectations import Checked, check_expectations

T = TypeVar("T")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class InputFile:
    path: Path
    relpath: str
    size: int
    mtime_ns: int

    @property
    def kind(self) -> str:
        return SUFFIXES[self.path.suffix.lower()]


@dataclass(frozen=True)
class Chunk:
    """One decoded micro-batch: where it starts, what it consumed, what was valid and what was not."""

    file_index: int
    start: int
    consumed: int
    frame: pl.DataFrame
    errors: list[InvalidRecord]
    checked: Checked | None = None  # expectations that failed (their dlq records are in errors)

    @property
    def expectations_dead_lettered(self) -> int:
        return len(self.checked.rejected) if self.checked is not None else 0

    @property
    def invalid(self) -> int:
        """Records that failed decoding (``errors`` also holds those dead-lettered by expectations)."""
        return len(self.errors) - self.expectations_dead_lettered

    def computed(self) -> Chunk:
        """The chunk once the engine has read its events: where it was and what it rejected, which
        its write still needs, without the events themselves (a batch's worth of memory)."""
        checked = replace(self.checked, frame=self.checked.frame.clear()) if self.checked else None
        return replace(self, frame=self.frame.clear(), checked=checked)


def check_chunk(chunk: Chunk, expectations: Expectations, now_ms: int | None) -> Chunk:
    """The chunk after its feature set's expectations: ``dlq`` failures leave the frame and join
    ``errors`` (in row order, so the DLQ outbox and the events list them as the input has them)."""
    checked = check_expectations(chunk.frame, expectations, now_ms)
    if not checked.failures:
        return chunk
    errors = sorted([*chunk.errors, *checked.rejected], key=lambda e: e.row)
    return replace(chunk, frame=checked.frame, errors=errors, checked=checked)


def list_inputs(root: Path) -> list[InputFile]:
    """A file, or every supported file under a folder (hidden ones skipped), in a stable order."""
    if not root.exists():
        msg = f"input {root} does not exist"
        raise ConfigError(msg)
    if root.is_file():
        candidates, base = [root], root.parent
    else:
        candidates, base = [p for p in root.rglob("*") if p.is_file()], root
    files = []
    for path in sorted(candidates):
        rel = path.relative_to(base).as_posix()
        if path.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in rel.split("/")):
            stat = path.stat()
            files.append(InputFile(path=path, relpath=rel, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    return files


CUTS = "tail/8"
"""How files are cut into batches (see the module's docstring), part of a run's fingerprint: a run
checkpointed under other cuts starts over rather than resume at a position that is not a cut."""


def fingerprint(files: list[InputFile], declaration: bytes, batch_events: int) -> str:
    listing = "\n".join(f"{f.relpath}\t{f.size}\t{f.mtime_ns}" for f in files)
    return sha256_hex(declaration + b"\n" + listing.encode() + f"\n{batch_events}\n{CUTS}".encode())


def tail_allowance(size: int) -> int:
    """Records a file's last batch may take beyond ``size``: at most 12.5 % more memory for one
    batch, where a batch of its own would cost its fixed costs for a handful of events."""
    return size // 8


def read_chunks(
    files: list[InputFile],
    file_index: int,
    row_offset: int,
    batch_events: int,
    limits: DecodeLimits,
    expectations: Expectations | None = None,
) -> Iterator[Chunk]:
    """Decoded micro-batches from ``(file_index, row_offset)`` on, checked against the feature
    set's ``expectations`` (freshness excepted: a backfill replays history)."""
    for index in range(file_index, len(files)):
        skip = row_offset if index == file_index else 0
        reader = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[files[index].kind]
        chunks = reader(files[index], index, skip, batch_events, limits, tail_allowance(batch_events))
        if expectations:
            chunks = (check_chunk(chunk, expectations, None) for chunk in chunks)
        yield from chunks


def read_slice(file: InputFile, index: int, start: int, count: int, limits: DecodeLimits) -> Chunk:
    """Records ``[start, start + count)`` of one file, decoded: a parallel engine's unit of work.
    ``start`` is a multiple of ``count`` (or the last slice); the slice ends where it says, never
    taking the file's rest as the last batch of ``read_chunks`` would."""
    reader = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[file.kind]
    empty = Chunk(file_index=index, start=start, consumed=0, frame=pl.DataFrame(), errors=[])
    return next(reader(file, index, start, count, limits, 0), empty)


def count_lines(file: InputFile) -> int:
    """How many records a file holds (a Parquet footer; a count of lines for text, header excluded)."""
    if file.kind == "parquet":
        return int(pq.ParquetFile(file.path).metadata.num_rows)
    lines, last = 0, b"\n"
    with file.path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return lines - 1 if file.kind == "csv" and lines else lines


def _cut(records: Iterator[T], size: int, tail: int) -> Iterator[list[T]]:
    """Batches of ``size`` records; the last one also takes a rest of up to ``tail`` records."""
    ahead = list(itertools.islice(records, size + tail + 1))
    while ahead:
        if len(ahead) <= size + tail:  # the end of the file is in sight: one batch takes it all
            yield ahead
            return
        yield ahead[:size]
        ahead = ahead[size:]
        ahead += itertools.islice(records, size + tail + 1 - len(ahead))


def _jsonl(
    file: InputFile, index: int, skip: int, size: int, limits: DecodeLimits, tail: int
) -> Iterator[Chunk]:
    with file.path.open("rb") as handle:
        start = skip
        for batch in _cut(itertools.islice(handle, skip, None), size, tail):
            frame, errors = decode_json_lines(batch, start + 1, limits)
            yield Chunk(file_index=index, start=start, consumed=len(batch), frame=frame, errors=errors)
            start += len(batch)


def _csv(
    file: InputFile, index: int, skip: int, size: int, limits: DecodeLimits, tail: int
) -> Iterator[Chunk]:
    with file.path.open(encoding="utf-8", newline="") as handle:
        header = [h.strip() for h in handle.readline().rstrip("\r\n").split(",")]
        start = skip
        for batch in _cut(itertools.islice(handle, skip, None), size, tail):
            frame, errors = decode_csv_lines(header, batch, start + 2, limits)
            yield Chunk(file_index=index, start=start, consumed=len(batch), frame=frame, errors=errors)
            start += len(batch)


def _parquet(
    file: InputFile, index: int, skip: int, size: int, limits: DecodeLimits, tail: int
) -> Iterator[Chunk]:
    start = 0
    with pq.ParquetFile(file.path) as parquet:
        total = parquet.metadata.num_rows
        batches = parquet.iter_batches(batch_size=size)
        for record_batch in batches:
            table: pa.RecordBatch | pa.Table = record_batch
            if 0 < total - (start + record_batch.num_rows) <= tail:  # the rest rides along
                table = pa.Table.from_batches([record_batch, *batches])
            rows = table.num_rows
            if start >= skip:
                frame, errors = decode_arrow(table, start, limits)
                yield Chunk(file_index=index, start=start, consumed=rows, frame=frame, errors=errors)
            start += rows


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up on the first batch (not at every command's start-up)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None
    return trim


@functools.cache
def prefer_jemalloc() -> None:
    """Arrow's jemalloc pool, unless ``ARROW_DEFAULT_MEMORY_POOL`` names one (or this build has
    none). Its default, mimalloc, made reading a batch's Parquet erratic here: the first batch,
    which nothing overlaps, took 0.11-0.19 s against 0.04 s under jemalloc or the system's
    malloc, and whole 1M-event backfills 0.89-1.13 s against 0.87-0.93 s (bench/README).
    Not the system's malloc: it fragments, and 10M events peaked 1.34x the 1M run (jemalloc 1.14x).
    Process-wide, as Arrow's pool is; buffers made before keep the pool they came from."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # (pyarrow built without jemalloc: Windows, some conda builds)
        return


def release_freed_memory() -> None:
    """Hand the memory the last batch freed back to the system, once per batch. The allocators
    keep it otherwise, and not for reuse alone: glibc's heap fragments as batch-sized arrays come
    and go (its mmap threshold rises after the first large free, so later ones land in the heap),
    and Arrow's mimalloc keeps the row groups read so far. Peak memory then crept up with every
    batch: 10M events peaked ~1.3x the 1M run, ~1.0x with this (bench/signals.py)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def count_records(files: list[InputFile]) -> int | None:
    """Parquet row counts from footers (cheap); None when text files make the total unknown."""
    if any(f.kind != "parquet" for f in files):
        return None
    return sum(int(pq.ParquetFile(f.path).metadata.num_rows) for f in files)


def original_records(root: Path, refs: Iterable[str]) -> dict[str, bytes]:
    """The records behind input references (``file:line N``, ``file:row N``), as they are in the
    input: the line itself for JSONL, the header line and the line for CSV (a CSV line means
    nothing without its header), the row as a JSON object for Parquet. What the DLQ keeps so
    a record can be read and replayed as it came; references whose file is gone are left out."""
    wanted: dict[str, dict[int, str]] = {}
    for ref in refs:
        relpath, _, position = ref.rpartition(":")
        unit, _, number = position.partition(" ")
        if relpath and unit in ("line", "row") and number.isdigit():
            wanted.setdefault(relpath, {})[int(number)] = ref
    base = root.parent if root.is_file() else root
    found: dict[str, bytes] = {}
    for relpath, rows in wanted.items():
        path = base / relpath
        try:
            if path.suffix.lower() == ".parquet":
                found.update(_parquet_rows(path, rows))
            else:
                found.update(_text_lines(path, rows, csv=path.suffix.lower() == ".csv"))
        except (OSError, ValueError, pa.ArrowException):
            continue
    return found


def _text_lines(path: Path, rows: dict[int, str], *, csv: bool) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    header = b""
    last = max(rows)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if csv and number == 1:
                header = line.rstrip(b"\r\n") + b"\n"
            elif number in rows:
                found[rows[number]] = header + line.rstrip(b"\r\n")
            if number >= last:
                break
    return found


def _parquet_rows(path: Path, rows: dict[int, str]) -> dict[str, bytes]:
    table = pq.read_table(path)
    return {
        ref: msgspec.json.encode(table.slice(index, 1).to_pylist()[0], enc_hook=str)
        for index, ref in rows.items()
        if index < table.num_rows
    }
