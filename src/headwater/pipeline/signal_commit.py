"""What one signal batch writes to the online store, built off the event loop in a worker thread.

The online store gets the serving view (per entity and window size the newest closed window,
plus every corrected row), the latest point features per entity, the late events with their
sha256 ``content_hash`` and input reference, the invalid records (DLQ outbox) and, when due,
the checkpoint — all applied in one transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import polars as pl

from headwater.featuresets import FeatureSetSpec
from headwater.models import BatchCommit, Dataset, SignalCheckpoint, signal_content_hash
from headwater.pipeline.signal_inputs import Chunk, InputFile
from headwater.ports import FeatureRows, OfflineFeatureStore
from headwater.stages.expectations import Checked
from headwater.stages.features import FEATURE_ROW_KEY, BatchResult, event_columns


async def commit_batch(
    *,
    online: FeatureRows,
    offline: OfflineFeatureStore,
    spec: FeatureSetSpec,
    scope: str,
    files: list[InputFile],
    batch_no: int,
    result: BatchResult,
    chunk: Chunk | None,
    checkpoint: Callable[[], SignalCheckpoint | None],
) -> None:
    """One batch made durable, the same for a backfill and a stream worker: offline parts first
    (deterministic names, so a replay overwrites them), then the online rows and checkpoint in
    one transaction, so a crash between the two leaves the checkpoint behind the parts, never
    ahead. ``checkpoint`` is called in the worker thread with the rest of the serialization:
    encoding the engine state is CPU work that overlaps the next batch's engine step."""

    def serialize() -> tuple[dict[Dataset, pl.DataFrame], BatchCommit]:
        commit = build_commit(scope, spec, files, batch_no, result, chunk, checkpoint())
        file_index = chunk.file_index if chunk is not None else 0
        return offline_datasets(spec, files, result, file_index), commit

    datasets, commit = await asyncio.to_thread(serialize)
    part = f"part-{scope}-{batch_no:06d}"
    # The parts are independent files: written side by side, their fsyncs overlap.
    await write_all(offline.write(dataset, spec.name, part, rows) for dataset, rows in datasets.items())
    await online.commit(commit)


def online_selection(rows: pl.DataFrame) -> pl.DataFrame:
    """The serving view: per (entity, window size) the newest closed window, plus every correction."""
    latest = pl.col("window_start_ms") == pl.col("window_start_ms").max().over("entity_id", "window_ms")
    return rows.filter(latest | (pl.col("revision") > 0))


def online_rows(rows: pl.DataFrame, spec: FeatureSetSpec) -> list[tuple[object, ...]]:
    """Window rows in the online store's form (``ONLINE_ROW_COLUMNS``)."""
    features = pl.struct(spec.window_columns).struct.json_encode().alias("features")
    return rows.select(*FEATURE_ROW_KEY, "revision", features).rows()


def online_points(points: pl.DataFrame, spec: FeatureSetSpec) -> list[tuple[object, ...]]:
    """Per entity its latest released event, with per field the latest value, EWMA and z-score
    the batch has for it (a patch: fields the batch lacks keep their stored values)."""
    if points.height == 0:
        return []
    columns = spec.point_columns
    latest = points.group_by("entity_id", maintain_order=True).agg(
        pl.col("event_time", "sequence").last(), *(pl.col(c).drop_nulls().last() for c in columns)
    )
    out: list[tuple[object, ...]] = []
    for row in latest.iter_rows(named=True):
        features = {c: row[c] for c in columns if row[c] is not None}
        encoded = msgspec.json.encode(features).decode()
        out.append((row["entity_id"], spec.name, spec.version, row["event_time"], row["sequence"], encoded))
    return out


def with_date(frame: pl.DataFrame, time_col: str) -> pl.DataFrame:
    """The UTC day as an integer (days since the epoch); the offline store names the partition."""
    return frame.with_columns((pl.col(time_col) // 86_400_000).cast(pl.Int32).alias("date"))


def build_commit(
    scope: str,
    spec: FeatureSetSpec,
    files: list[InputFile],
    batch_no: int,
    result: BatchResult,
    chunk: Chunk | None,
    checkpoint: SignalCheckpoint | None,
) -> BatchCommit:
    rows = online_rows(online_selection(result.rows), spec)
    file_index = chunk.file_index if chunk is not None else 0
    invalid = [
        (scope, batch_no, i, input_ref(files, file_index, e.row), e.field, e.reason)
        for i, e in enumerate(chunk.errors if chunk is not None else [])
    ]
    return BatchCommit(
        scope=scope,
        batch_no=batch_no,
        online_rows=rows,
        online_points=online_points(result.points, spec),
        invalid_rows=invalid,
        checkpoint=checkpoint,
    )


def offline_datasets(
    spec: FeatureSetSpec, files: list[InputFile], result: BatchResult, file_index: int
) -> dict[Dataset, pl.DataFrame]:
    """What a batch appends to the offline store (backfill and stream worker alike)."""
    points = result.points.select(
        "entity_id",
        pl.lit(spec.name).alias("feature_set"),
        pl.lit(spec.version).alias("version"),
        "event_time",
        "sequence",
        *spec.point_columns,
    )
    late = late_frame(spec, files, result.late, file_index)
    return {
        Dataset.windows: with_date(result.rows, "window_start_ms"),
        Dataset.points: with_date(points, "event_time"),
        Dataset.late: with_date(late, "event_time"),
    }


def count_batch(
    counters: dict[str, int], result: BatchResult, *, invalid: int = 0, checked: Checked | None = None
) -> None:
    """Add one batch to the run's RunCompleted counters (``invalid``: records that failed decoding;
    ``checked``: the batch's expectations, whose dead-lettered events were never in ``result``)."""
    removed = len(checked.rejected) if checked is not None else 0
    counters["events_seen"] += result.events_in + invalid + removed
    counters["events_invalid"] += invalid
    counters["expectations_failed"] += checked.failed if checked is not None else 0
    counters["expectations_dead_lettered"] += removed
    counters["duplicates"] += result.duplicates
    counters["late_dropped"] += result.late_dropped
    counters["late_corrected"] += result.late_corrected
    counters["feature_rows_written"] += result.rows.height
    counters["points_written"] += result.points.height
    counters["points_late"] += result.points_late


def late_frame(
    spec: FeatureSetSpec, files: list[InputFile], late: pl.DataFrame, file_index: int
) -> pl.DataFrame:
    """The late-events table rows of a batch: the event, the window it missed, why, and where it came from.

    ``content_hash`` is the sha256 identity of the event (computed once per distinct late event).
    """
    if late.height == 0:
        return late
    identity = [c for c in event_columns(spec) if c != "row"]
    events = late.select(identity).unique(maintain_order=True)
    digests = []
    names = [f.name for f in spec.features]
    for entity, t, seq, *values, extra in events.iter_rows():
        declared = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        payload = {**declared, **(json.loads(extra) if extra else {})}
        digests.append(signal_content_hash(entity, t, seq, payload))
    hashed = events.with_columns(pl.Series("content_hash", digests, dtype=pl.String))
    return (
        _with_refs(late, files, file_index)
        .join(
            hashed,
            on=identity,
            how="left",
            maintain_order="left",
            nulls_equal=True,
        )
        .select(
            *_event_columns(spec),
            "extra",
            "window_ms",
            "window_start_ms",
            "watermark_ms",
            "policy",
            "reason",
            (pl.col("_prefix") + pl.col("row").cast(pl.String)).alias("input_ref"),
            "content_hash",
        )
    )


def _with_refs(late: pl.DataFrame, files: list[InputFile], file_index: int) -> pl.DataFrame:
    """Each late row's input reference prefix (``file:line ``): the batch's file, or the row's own
    when the rows carry a ``file_index`` (a Spark bucket holds events of many files)."""
    if "file_index" not in late.columns:
        return late.with_columns(pl.lit(input_ref(files, file_index, 0)[:-1]).alias("_prefix"))
    refs = [input_ref(files, i, 0)[:-1] for i, _ in enumerate(files)]
    prefixes = pl.DataFrame(
        {"file_index": range(len(files)), "_prefix": refs},
        schema={"file_index": late.schema["file_index"], "_prefix": pl.String()},
    )
    return late.join(prefixes, on="file_index", how="left", maintain_order="left")


def _event_columns(spec: FeatureSetSpec) -> list[str | pl.Expr]:
    """The leading columns of the point and late tables: the event, named by its feature set."""
    return [
        "entity_id",
        pl.lit(spec.name).alias("feature_set"),
        pl.lit(spec.version).alias("version"),
        "event_time",
        "sequence",
        *(f.name for f in spec.features),
    ]


def input_ref(files: list[InputFile], file_index: int, row: int) -> str:
    file = files[file_index] if file_index < len(files) else None
    if file is None:
        return f"row {row}"
    unit = "row" if file.kind == "parquet" else "line"
    return f"{file.relpath}:{unit} {row}"


async def write_all(writes: Iterable[Awaitable[None]]) -> None:
    """Run the offline part writes of a batch together (independent files: their fsyncs overlap);
    every write finishes before the first error is raised, so none is left running unwatched."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
