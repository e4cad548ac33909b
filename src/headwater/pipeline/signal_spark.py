"""A signal backfill on Spark that gives exactly the local backfill's rows.

The local engine's output depends on one sequential thing, the watermark: ``W_{i-1}`` is a prefix
max over the whole arrival order (DESIGN §5). Everything else — dedup (``evict_at > W_{i-1}``),
lateness (``end <= W_{i-1}``), corrections, window partials and points — is per entity once each
event carries its ``W_{i-1}``. So the backfill runs in three Spark steps, each calling the same
stage functions as a local run:

1. **scan**: the input is cut into slices (file, first record, count) in arrival order; a task
   decodes its slice with the local readers (``signal_inputs.read_slice``) and returns only its
   maximum event time, its count and the records for the DLQ.
2. **watermarks**: the driver combines the slices' maxima into the max before each slice; a task
   decodes its slice again and computes ``W_{i-1}`` for each event with ``watermark_before_expr``
   from that offset (decoding twice costs less than Spark caching every event).
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
    Chunk,
    InputFile,
    check_chunk,
    count_lines,
    fingerprint,
    list_inputs,
    read_slice,
)
from headwater.pipeline.signals import COUNTERS, SignalPipeline
from headwater.stages.decode import DecodeLimits
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


_SCAN = pa.schema(
    [
        ("slice", pa.int64()),
        ("top", pa.int64()),
        ("n", pa.int64()),
        ("row", pa.int64()),
        ("error", pa.string()),
    ]
)
"""What the scan pass returns per slice: one summary row (its events' maximum time and count,
``error`` null), then one row per record that goes to the DLQ, then the expectation counts."""


def _decoded(files: list[InputFile], limits: DecodeLimits, spec: FeatureSetSpec, plan: Slice) -> Chunk:
    """One slice read and decoded by the local readers, checked against the expectations
    (freshness excepted, as in a local backfill)."""
    chunk = read_slice(files[plan.file_index], plan.file_index, plan.start, plan.count, limits)
    return check_chunk(chunk, spec.expectations, None) if spec.expectations else chunk


def _slices(batches: Iterator[pa.RecordBatch]) -> Iterator[Slice]:
    for batch in batches:
        yield from (Slice(*values) for values in zip(*(c.to_pylist() for c in batch.columns), strict=True))


def scan_task(
    files: list[InputFile], limits: DecodeLimits, spec: FeatureSetSpec, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Step 1: decode each slice for what the driver needs to place the watermark: its maximum
    event time and its count, and the records the DLQ gets. Only these small rows leave the task
    (the events pass decodes again: cheaper than Spark caching every event)."""
    for plan in _slices(batches):
        chunk = _decoded(files, limits, spec, plan)
        top = chunk.frame["event_time"].max() if chunk.frame.height else None
        rows: list[tuple[int, int | None, int, int | None, str | None]] = [
            (plan.number, top, chunk.frame.height, None, None)  # type: ignore[list-item]
        ]
        rows += [
            (plan.number, None, 0, e.row, msgspec.json.encode([e.field, e.reason]).decode())
            for e in chunk.errors
        ]
        if chunk.checked is not None:
            counts = msgspec.json.encode({CHECKED: chunk.checked.failures}).decode()
            rows.append((plan.number, None, 0, -1, msgspec.json.encode([CHECKED, counts]).decode()))
        yield pa.RecordBatch.from_pylist([dict(zip(_SCAN.names, r, strict=True)) for r in rows], schema=_SCAN)


def events_task(
    files: list[InputFile],
    limits: DecodeLimits,
    spec: FeatureSetSpec,
    offsets: dict[int, int | None],
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """Step 2: each slice decoded again, every event with its ``W_{i-1}``: the prefix max within
    the slice, continued from the maximum of the slices before it (``offsets``)."""
    schema = _watermarked_schema(spec)
    for plan in _slices(batches):
        frame = _decoded(files, limits, spec, plan).frame
        if frame.height:
            yield from to_batches(
                frame.with_columns(
                    watermark_before_expr("event_time", spec.lateness_ms, offsets[plan.number]).alias(
                        "wm_before"
                    ),
                    (pl.lit(plan.number * _SLICE, dtype=pl.Int64) + pl.col("row")).alias("row"),
                ),
                schema,
            )


def _watermarked_schema(spec: FeatureSetSpec) -> pa.Schema:
    return arrow_schema({**batch_schema(spec.features), "wm_before": pl.Int64()})


def engine_task(spec: FeatureSetSpec, key: tuple[Any, ...], table: pa.Table) -> pa.Table:
    """Step 3: one bucket of entities, its whole history as one micro-batch, then the end of input."""
    bucket = int(key[0].as_py())
    events = pl.DataFrame(pl.from_arrow(table)).sort("row")
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
            events, errors, valid = await asyncio.to_thread(self._decode, session, files, slices, limits)
            await self._commit_invalid(files, slices, errors, counters)
            if (checked := self._expectations(run_id, errors, counters)) is not None:
                yield checked
            total = counters["events_seen"]
            buckets = 0
            async for number, result in self._buckets(session, events, valid):
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
    ) -> tuple[DataFrame, list[tuple[int, int, str, str]], int]:
        """Steps 1 and 2: (events with ``W_{i-1}``, to be computed; invalid records as (slice,
        row, field, reason); how many events are valid)."""
        plan = session.sparkContext.parallelize(
            [(s.number, s.file_index, s.start, s.count) for s in slices], max(1, len(slices))
        ).toDF("number long, file_index long, start long, count long")
        scan = functools.partial(scan_task, files, limits, self.spec)
        found = run_spark(plan.mapInArrow(scan, ddl(_SCAN)).collect)
        tops = {int(r["slice"]): int(r["top"]) for r in found if r["error"] is None and r["top"] is not None}
        offsets: dict[int, int | None] = {}
        running: int | None = None
        for s in slices:
            offsets[s.number] = running
            if s.number in tops:
                running = tops[s.number] if running is None else max(running, tops[s.number])
        invalid = [
            (int(r["slice"]), int(r["row"]), *msgspec.json.decode(r["error"]))
            for r in found
            if r["error"] is not None
        ]
        events = functools.partial(events_task, files, limits, self.spec, offsets)
        watermarked = plan.mapInArrow(events, ddl(_watermarked_schema(self.spec)))
        return watermarked, invalid, sum(int(r["n"]) for r in found if r["error"] is None)

    async def _buckets(
        self, session: SparkSession, events: DataFrame, total: int
    ) -> AsyncIterator[tuple[int, BatchResult]]:
        """Step 3, streamed back to the driver one bucket at a time."""
        from pyspark.sql import functions as F

        # Buckets: enough tasks for every core, each about a micro-batch or less.
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
            batch_no=number, result=result if late is None else replace(result, late=late),
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
