"""A signal backfill on Spark that gives exactly the local backfill's rows.

The local engine's output depends on one sequential thing, the watermark: ``W_{i-1}`` is a prefix
max over the whole arrival order (DESIGN §5). Everything else — dedup (``evict_at > W_{i-1}``),
lateness (``end <= W_{i-1}``), corrections, window partials and points — is per entity once each
event carries its ``W_{i-1}``. So the backfill runs in three Spark steps, each calling the same
stage functions as a local run:

1. **decode**: the input is cut into slices (file, first record, count) in arrival order; a task
   decodes its slice with the local readers (``signal_inputs.read_slice``).
2. **watermarks**: the driver combines the slices' maxima into the max before each slice; a task
   then computes ``W_{i-1}`` for its slice with ``watermark_before_expr`` from that offset.
3. **engine**: events are grouped by a hash of their entity into buckets; a task sorts its bucket
   by arrival and runs ``process_batch`` then ``flush`` — one micro-batch holding the bucket's
   whole history, which the engine computes exactly as event-at-a-time.

The driver streams each bucket's result into the same offline and online stores with the same
keys (``commit_batch``, one part per bucket), then commits the checkpoint as completed. What
differs from a local run is only the history, never the result: the offline ``windows`` dataset
holds each row's final revision (a local run also keeps the intermediate ones), and
``feature_rows_written`` counts final rows.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import msgspec
import polars as pl
import pyarrow as pa

from headwater.adapters.spark import (
    arrow_schema,
    cancel_all_jobs,
    ddl,
    default_parallelism,
    from_arrow,
    open_session,
    run_spark,
    to_batches,
)
from headwater.events import (
    ExpectationCount,
    ExpectationsFailed,
    RunStarted,
    SignalEvent,
    SignalProgress,
    SignalRunCompleted,
    WindowsClosed,
)
from headwater.featuresets import FeatureSetSpec
from headwater.models import BatchCommit, Dataset, sha256_hex, signal_checkpoint
from headwater.observability import open_span
from headwater.pipeline.signal_commit import commit_batch, count_batch, input_ref
from headwater.pipeline.signal_inputs import (
    InputFile,
    check_chunk,
    count_lines,
    fingerprint,
    list_inputs,
    read_slice,
)
from headwater.pipeline.signals import COUNTERS, SignalPipeline
from headwater.stages.decode import DecodeLimits, InvalidRecord
from headwater.stages.expectations import REASON_PREFIX
from headwater.stages.features import BatchResult, EngineState, batch_schema, flush, process_batch
from headwater.stages.windows import watermark_before_expr

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_SLICE = 2**40
"""A Spark run numbers each event ``slice * 2**40 + row``: arrival order in one integer (a file
holds fewer than 2**40 records), which the late table turns back into file and row."""
_RESULT = pa.schema([("bucket", pa.int64()), ("kind", pa.string()), ("payload", pa.binary())])
CHECKED = "__expectations__"
"""The field of the row a decode task adds for its slice's expectation failures."""
_RESULT_COUNTS = ("events_in", "duplicates", "late_dropped", "late_corrected", "points_late")


@dataclass(frozen=True)
class Slice:
    """Records ``[start, start + count)`` of input file ``file_index``: one decode task."""

    number: int
    file_index: int
    start: int
    count: int


def plan_slices(files: list[InputFile], size: int) -> list[Slice]:
    """Cut the input into slices of at most ``size`` records, in arrival order."""
    slices: list[Slice] = []
    for index, file in enumerate(files):
        total = count_lines(file)
        for start in range(0, total, size):
            slices.append(Slice(len(slices), index, start, size))  # the last one reads what is left
    return slices


# --- tasks (run in Spark's Python workers: module-level, so they pickle by reference) ----------


def _event_schema(spec: FeatureSetSpec) -> pa.Schema:
    return arrow_schema({**batch_schema(spec.features), "slice": pl.Int64(), "error": pl.String()})


def decode_task(
    files: list[InputFile], limits: DecodeLimits, spec: FeatureSetSpec, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Step 1: decode the slices this task was given; invalid records travel as rows with ``error``."""
    schema = _event_schema(spec)
    for batch in batches:
        for number, file_index, start, count in zip(
            *(batch.column(i).to_pylist() for i in range(4)), strict=True
        ):
            chunk = read_slice(files[file_index], file_index, start, count, limits)
            if spec.expectations:  # freshness excepted, as in a local backfill
                chunk = check_chunk(chunk, spec.expectations, None)
            events = chunk.frame.with_columns(
                pl.lit(number, dtype=pl.Int64).alias("slice"), pl.lit(None, dtype=pl.String).alias("error")
            )
            yield from to_batches(events, schema)
            if chunk.errors:
                yield from to_batches(_error_rows(chunk.errors, number, events.schema), schema)
            if chunk.checked is not None:  # the counts travel as one marked row (row -1)
                counts = msgspec.json.encode({CHECKED: chunk.checked.failures}).decode()
                failures = [InvalidRecord(row=-1, field=CHECKED, reason=counts)]
                yield from to_batches(_error_rows(failures, number, events.schema), schema)


def _error_rows(errors: list[InvalidRecord], number: int, schema: pl.Schema) -> pl.DataFrame:
    """Invalid records as event rows: their slice and row, why (``error``), nulls elsewhere."""
    found = pl.DataFrame(
        {
            "row": [e.row for e in errors],
            "error": [msgspec.json.encode([e.field, e.reason]).decode() for e in errors],
            "slice": [number] * len(errors),
        },
        schema={"row": pl.Int64(), "error": pl.String(), "slice": pl.Int64()},
    )
    return found.select(
        pl.col(name) if name in found.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    )


def watermark_task(
    offsets: dict[int, int | None], spec: FeatureSetSpec, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Step 2: each event's ``W_{i-1}``, continuing the prefix max from the slices before its own.
    A partition holds one slice in arrival order, possibly cut into several Arrow batches."""
    schema = _watermarked_schema(spec)
    running: dict[int, int | None] = {}
    for batch in batches:
        # A batch may hold the end of one slice and the start of the next: each part continues
        # its own slice's prefix max.
        for part in from_arrow(batch).partition_by("slice", maintain_order=True):
            number = int(part["slice"][0])
            before = running.get(number, offsets[number])
            frame = part.with_columns(
                watermark_before_expr("event_time", spec.lateness_ms, before).alias("wm_before"),
                (pl.col("slice") * _SLICE + pl.col("row")).alias("row"),
            )
            batch_max = int(frame["event_time"].max())  # type: ignore[arg-type]
            running[number] = batch_max if before is None else max(before, batch_max)
            yield from to_batches(frame, schema)


def _watermarked_schema(spec: FeatureSetSpec) -> pa.Schema:
    return arrow_schema({**batch_schema(spec.features), "wm_before": pl.Int64()})


def engine_task(spec: FeatureSetSpec, key: tuple[Any, ...], table: pa.Table) -> pa.Table:
    """Step 3: one bucket of entities, its whole history as one micro-batch, then the end of input."""
    bucket = int(key[0].as_py())
    events = from_arrow(table).sort("row")
    state, result = process_batch(EngineState(), events.drop("bucket", strict=False), spec)
    _, tail = flush(state, spec)
    frames = {
        "rows": pl.concat([result.rows, tail.rows], how="vertical_relaxed"),
        "late": result.late,
        "points": pl.concat([result.points, tail.points], how="vertical_relaxed"),
    }
    counts = {name: getattr(result, name) for name in _RESULT_COUNTS}
    payloads = [(kind, _ipc(frame)) for kind, frame in frames.items()]
    payloads.append(("counts", msgspec.msgpack.encode(counts)))
    return pa.table(
        {
            "bucket": pa.array([bucket] * len(payloads), pa.int64()),
            "kind": [kind for kind, _ in payloads],
            "payload": pa.array([payload for _, payload in payloads], pa.binary()),
        },
        schema=_RESULT,
    )


def _engine(spec: FeatureSetSpec) -> Callable[[Any, Any], Any]:
    """``engine_task`` for ``applyInArrow``, which reads its API from the hints of a plain function
    (a ``functools.partial`` makes pyspark 4.3 fail: UnboundLocalError in group_ops)."""

    def task(key: Any, table: Any) -> Any:
        return engine_task(spec, key, table)

    return task


def _ipc(frame: pl.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.write_ipc(sink, compression="lz4")
    return sink.getvalue()


# --- the driver ---------------------------------------------------------------------------------


class SparkSignalPipeline(SignalPipeline):
    """``SignalPipeline`` with its engine on Spark: same inputs, stores, locks, lineage and events."""

    def __init__(self, *, master: str, **pipeline: Any) -> None:
        super().__init__(**pipeline)
        self.master = master

    async def _events(self) -> AsyncIterator[SignalEvent]:
        started = time.monotonic()
        run_id = sha256_hex(f"{self.scope}{self.clock()}")[:16]
        files = await asyncio.to_thread(list_inputs, self.inputs)
        yield RunStarted(run_id=run_id, kind="signals", source=str(self.inputs))
        trace = open_span("headwater.signals.run", run_id=run_id, feature_set=self.spec.name, compute="spark")
        counters = dict.fromkeys(COUNTERS, 0)
        try:
            session = await asyncio.to_thread(open_session, self.master)
            slices = await asyncio.to_thread(plan_slices, files, self.options.batch_events)
            limits = DecodeLimits(
                now_ms=self.clock(),
                max_future_ms=self.options.max_future_ms,
                max_record_bytes=self.options.max_record_bytes,
                fields=self.spec.features,
            )
            events, errors = await asyncio.to_thread(self._decode, session, files, slices, limits)
            await self._commit_invalid(files, slices, errors, counters)
            if (checked := self._expectations(run_id, errors, counters)) is not None:
                yield checked
            total = counters["events_seen"]
            buckets = 0
            async for number, result in self._buckets(session, events):
                total += result.events_in
                await self._store_bucket(files, slices, number, result, counters)
                buckets = number + 1
                yield WindowsClosed(
                    run_id=run_id,
                    batch=number,
                    rows=result.rows.height,
                    points=result.points.height,
                    late=result.late.height,
                    watermark_ms=None,
                )
                yield SignalProgress(
                    run_id=run_id,
                    events_seen=total,
                    events_total=None,
                    files_done=len(files),
                    files_total=len(files),
                    eta_seconds=None,
                    elapsed_seconds=round(time.monotonic() - started, 3),
                )
            events.unpersist()
            await self._finish(files, buckets, counters)
        except BaseException:  # a stop request or an error: nothing goes on running in Spark
            cancel_all_jobs()
            raise
        finally:
            if trace is not None:
                trace.set_attributes({f"signals.{k}": v for k, v in counters.items()})
                trace.end()
        await self._deliver_dead_letters()
        yield SignalRunCompleted(
            run_id=run_id,
            feature_set=self.spec.name,
            feature_set_version=self.spec.version,
            batches=buckets,
            resumed_from_batch=0,
            elapsed_seconds=round(time.monotonic() - started, 3),
            **counters,
        )

    def _decode(
        self, session: SparkSession, files: list[InputFile], slices: list[Slice], limits: DecodeLimits
    ) -> tuple[DataFrame, list[tuple[int, int, str, str]]]:
        """Steps 1 and 2: (events with ``W_{i-1}``; invalid records as (slice, row, field, reason))."""
        from pyspark.sql import functions as F

        plan = session.sparkContext.parallelize(
            [(s.number, s.file_index, s.start, s.count) for s in slices], max(1, len(slices))
        ).toDF("slice long, file_index long, start long, count long")
        schema = _event_schema(self.spec)
        decoded = plan.mapInArrow(
            functools.partial(decode_task, files, limits, self.spec), ddl(schema)
        ).cache()
        stats = decoded.where(F.col("error").isNull()).groupBy("slice").agg(F.max("event_time").alias("top"))
        tops = {int(row["slice"]): int(row["top"]) for row in run_spark(stats.collect)}
        offsets: dict[int, int | None] = {}
        running: int | None = None
        for s in slices:
            offsets[s.number] = running
            if s.number in tops:
                running = tops[s.number] if running is None else max(running, tops[s.number])
        invalid = [
            (int(r["slice"]), int(r["row"]), *msgspec.json.decode(r["error"]))
            for r in run_spark(
                decoded.where(F.col("error").isNotNull()).select("slice", "row", "error").collect
            )
        ]
        valid = decoded.where(F.col("error").isNull()).drop("error")
        watermarked = valid.mapInArrow(
            functools.partial(watermark_task, offsets, self.spec), ddl(_watermarked_schema(self.spec))
        )
        return watermarked, invalid

    async def _buckets(
        self, session: SparkSession, events: DataFrame
    ) -> AsyncIterator[tuple[int, BatchResult]]:
        """Step 3, streamed back to the driver one bucket at a time."""
        from pyspark.sql import functions as F

        # Buckets: enough tasks for every core, each about a micro-batch or less.
        total = await asyncio.to_thread(run_spark, events.count)
        count = max(2 * default_parallelism(session), -(-total // self.options.batch_events))
        grouped = events.withColumn("bucket", F.pmod(F.hash("entity_id"), F.lit(count))).groupBy("bucket")
        results = grouped.applyInArrow(_engine(self.spec), ddl(_RESULT))
        rows = results.toLocalIterator(prefetchPartitions=True)
        numbering: dict[int, int] = {}
        pending: dict[str, bytes] = {}
        current: int | None = None
        while (row := await asyncio.to_thread(run_spark, lambda: next(rows, None))) is not None:
            bucket = int(row["bucket"])
            if current is not None and bucket != current:
                yield numbering.setdefault(current, len(numbering)), _result(pending)
                pending = {}
            current = bucket
            pending[str(row["kind"])] = bytes(row["payload"])
        if current is not None:
            yield numbering.setdefault(current, len(numbering)), _result(pending)

    async def _store_bucket(
        self,
        files: list[InputFile],
        slices: list[Slice],
        number: int,
        result: BatchResult,
        counters: dict[str, int],
    ) -> None:
        late = _late_in_files(result.late, slices)
        await commit_batch(
            online=self.online, offline=self.offline, spec=self.spec, scope=self.scope, files=files,
            batch_no=number, result=result if late is None else _with_late(result, late),
            chunk=None, checkpoint=lambda: None,
        )  # fmt: skip
        count_batch(counters, result)

    async def _commit_invalid(
        self,
        files: list[InputFile],
        slices: list[Slice],
        errors: list[tuple[int, int, str, str]],
        counters: dict[str, int],
    ) -> None:
        """Invalid records (and those a ``dlq`` expectation removed) enter the DLQ outbox first
        (batch number -1: before every bucket), in input order."""
        rejected = sorted(e for e in errors if e[2] != CHECKED)
        if not rejected:
            return
        invalid = [
            (self.scope, -1, i, input_ref(files, slices[s].file_index, row), field, reason)
            for i, (s, row, field, reason) in enumerate(rejected)
        ]
        await self.online.commit(
            BatchCommit(
                scope=self.scope,
                batch_no=-1,
                online_rows=[],
                online_points=[],
                invalid_rows=invalid,
                checkpoint=None,
            )
        )
        removed = sum(1 for e in rejected if e[3].startswith(REASON_PREFIX))
        counters["events_seen"] += len(rejected)
        counters["events_invalid"] += len(rejected) - removed
        counters["expectations_dead_lettered"] += removed

    def _expectations(
        self, run_id: str, errors: list[tuple[int, int, str, str]], counters: dict[str, int]
    ) -> ExpectationsFailed | None:
        """The whole run's expectation failures, summed over the slices (one event, batch 0)."""
        totals: dict[tuple[str, str, str], int] = {}
        for _, _, field, reason in errors:
            if field == CHECKED:
                for item in msgspec.json.decode(reason, type=dict[str, list[ExpectationCount]])[CHECKED]:
                    key = (item.field, item.expectation, item.on_fail)
                    totals[key] = totals.get(key, 0) + item.count
        if not totals:
            return None
        failures = [
            ExpectationCount(field=f, expectation=e, on_fail=o, count=n) for (f, e, o), n in totals.items()
        ]
        counters["expectations_failed"] += sum(totals.values())
        return ExpectationsFailed(
            run_id=run_id,
            feature_set=self.spec.name,
            batch=0,
            failures=failures,
            dead_lettered=counters["expectations_dead_lettered"],
        )

    async def _finish(self, files: list[InputFile], buckets: int, counters: dict[str, int]) -> None:
        """The run is complete: parts of an earlier run beyond the last bucket go, the checkpoint says so."""
        for dataset in Dataset:
            await self.offline.prune(dataset, self.spec.name, self.scope, buckets - 1)
        checkpoint = signal_checkpoint(
            self.scope,
            fingerprint(files, self.spec.fingerprint(), self.options.batch_events),
            next_batch=buckets,
            position=(len(files), 0),
            counters=dict(counters),
            state=EngineState().to_bytes(),
            status="completed",
        )
        await self.online.commit(
            BatchCommit(
                scope=self.scope,
                batch_no=buckets,
                online_rows=[],
                online_points=[],
                invalid_rows=[],
                checkpoint=checkpoint,
            )
        )


def _result(payloads: dict[str, bytes]) -> BatchResult:
    frames = {kind: pl.read_ipc(io.BytesIO(payloads[kind])) for kind in ("rows", "late", "points")}
    counts = msgspec.msgpack.decode(payloads["counts"])
    return BatchResult(rows=frames["rows"], late=frames["late"], points=frames["points"], **counts)


def _late_in_files(late: pl.DataFrame, slices: list[Slice]) -> pl.DataFrame | None:
    """Late rows with their file (``file_index``) and their row in it again (see ``_SLICE``)."""
    if late.height == 0:
        return None
    files = pl.DataFrame(
        {"_slice": [s.number for s in slices], "file_index": [s.file_index for s in slices]},
        schema={"_slice": pl.Int64(), "file_index": pl.Int64()},
    )
    return (
        late.with_columns((pl.col("row") // _SLICE).alias("_slice"), (pl.col("row") % _SLICE).alias("row"))
        .join(files, on="_slice", how="left", maintain_order="left")
        .drop("_slice")
    )


def _with_late(result: BatchResult, late: pl.DataFrame) -> BatchResult:
    return replace(result, late=late)
