"""The signal pipeline: files → decode → dedup → windows/points → offline + online stores.

``stream_events()`` is the one primitive; ``iter_results``/``run_async``/``run`` are views of it.
Per micro-batch the order is fixed so a crash anywhere converges (DESIGN §4): offline parts are
written (deterministic names, atomic replace), then ONE online transaction upserts the rows and
saves the checkpoint (input position + engine state), then invalid records are handed to the DLQ
(outbox: marked delivered afterwards). A re-run resumes from the checkpoint; a finished run
re-run from scratch rewrites the same parts and upserts the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from headwater.errors import HomeBusy
from headwater.events import (
    ExpectationsFailed,
    RunStarted,
    SignalEvent,
    SignalProgress,
    SignalRejected,
    SignalRunCompleted,
    WaitingForHome,
    WindowsClosed,
)
from headwater.featuresets import FeatureSetSpec
from headwater.homelock import describe_holder, feature_set_lock, home_lock, lock_path
from headwater.lineage import Lineage
from headwater.models import Dataset, DeadLetter, SignalCheckpoint, sha256_hex, signal_checkpoint
from headwater.observability import open_span, span
from headwater.pipeline.gil import quick_gil_handover
from headwater.pipeline.signal_commit import commit_batch, count_batch, input_ref
from headwater.pipeline.signal_inputs import (
    Chunk,
    InputFile,
    count_records,
    fingerprint,
    list_inputs,
    original_records,
    prefer_jemalloc,
    read_chunks,
    release_freed_memory,
)
from headwater.ports import DeadLetterSink, FeatureStore, OfflineFeatureStore
from headwater.stages.decode import DecodeLimits
from headwater.stages.expectations import REASON_PREFIX
from headwater.stages.features import BatchResult, EngineState, combined, flush, process_batch

Clock = Callable[[], int]
COUNTERS = (
    "events_seen",
    "events_invalid",
    "duplicates",
    "late_dropped",
    "late_corrected",
    "feature_rows_written",
    "points_written",
    "points_late",
    "expectations_failed",
    "expectations_dead_lettered",
)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SignalOptions:
    batch_events: int = 250_000  # Settings.micro_batch_events says why
    max_future_ms: int = 86_400_000
    max_record_bytes: int = 65_536
    progress_interval_seconds: float = 1.0
    checkpoint_interval_seconds: float = 1.0  # 0: every batch; replay after a crash covers the rest
    home: Path | None = None  # a backfill holds the home's lock of its feature set (homelock.py)
    wait_for_home: bool = True


@dataclass
class _Run:
    """Mutable progress of one run: touched only by the engine thread, one batch at a time."""

    run_id: str
    files: list[InputFile]
    fingerprint: str
    limits: DecodeLimits
    state: EngineState
    counters: dict[str, int]
    batch_no: int
    resumed_from: int
    file_index: int
    row_offset: int
    total: int | None
    last_checkpoint: float = 0.0
    trace: Any = None  # the run's span (observability.open_span) when tracing is on


@dataclass(frozen=True)
class _Staged:
    """One computed batch on its way to the stores (engine state is immutable, so it can be shared)."""

    batch_no: int
    result: BatchResult
    state: EngineState
    chunk: Chunk | None
    files: list[InputFile]
    events: list[SignalEvent]
    checkpoint: tuple[str, tuple[int, int], dict[str, int], str] | None
    trace: Any = None  # the run's span


class SignalPipeline:
    """Backfill a folder or file of signals into a feature set (the stream worker reuses the stages)."""

    def __init__(
        self,
        *,
        inputs: Path,
        spec: FeatureSetSpec,
        online: FeatureStore,
        offline: OfflineFeatureStore,
        dead_letters: DeadLetterSink | None = None,
        options: SignalOptions | None = None,
        clock: Clock = wall_clock_ms,
        lineage: Lineage | None = None,
    ) -> None:
        self.lineage = lineage
        self.inputs = inputs
        self.spec = spec
        self.online = online
        self.offline = offline
        self.dead_letters = dead_letters
        self.options = options or SignalOptions()
        self.clock = clock
        self.scope = sha256_hex(f"{spec.name}\x00{spec.version}\x00{inputs.resolve()}")[:12]

    def stream_events(self) -> AsyncGenerator[SignalEvent, None]:
        """The run's events, seen by its lineage when there is one (no extra hop otherwise)."""
        stream = self._locked_events()
        return self.lineage.observe(stream) if self.lineage is not None else stream

    async def _locked_events(self) -> AsyncGenerator[SignalEvent, None]:
        """Two backfills of one feature set into one home would interleave their checkpoints:
        the second waits for the first (or stops at once with ``wait_for_home=False``)."""
        home = self.options.home
        async with contextlib.AsyncExitStack() as held:
            if home is not None:
                name = feature_set_lock(self.spec.name)
                try:
                    await held.enter_async_context(home_lock(home, name, wait=False))
                except HomeBusy:
                    if not self.options.wait_for_home:
                        raise
                    yield WaitingForHome(home=str(home), holder=describe_holder(lock_path(home, name)))
                    await held.enter_async_context(home_lock(home, name))
            async for event in self._events():
                yield event

    async def _events(self) -> AsyncIterator[SignalEvent]:
        started = time.monotonic()
        run_id = sha256_hex(f"{self.scope}{self.clock()}")[:16]
        prefer_jemalloc()
        files = await asyncio.to_thread(list_inputs, self.inputs)
        yield RunStarted(run_id=run_id, kind="signals", source=str(self.inputs))
        run = await self._begin(files, run_id)
        run.trace = open_span("headwater.signals.run", run_id=run_id, feature_set=self.spec.name)
        try:
            with quick_gil_handover():  # (decoding and the engine step overlap: see gil.py)
                async for event in self._batches(run, files, started):
                    yield event
        except BaseException as exc:
            if run.trace is not None:
                run.trace.record_exception(exc)
            raise
        finally:
            if run.trace is not None:
                run.trace.set_attributes({f"signals.{k}": v for k, v in run.counters.items()})
                run.trace.end()
        for dataset in Dataset:
            await self.offline.prune(dataset, self.spec.name, self.scope, run.batch_no - 1)
        await self._deliver_dead_letters()
        yield SignalRunCompleted(
            run_id=run_id,
            feature_set=self.spec.name,
            feature_set_version=self.spec.version,
            batches=run.batch_no,
            resumed_from_batch=run.resumed_from,
            elapsed_seconds=round(time.monotonic() - started, 3),
            **run.counters,
        )

    async def _batches(self, run: _Run, files: list[InputFile], started: float) -> AsyncIterator[SignalEvent]:
        chunks = read_chunks(
            files,
            run.file_index,
            run.row_offset,
            self.options.batch_events,
            run.limits,
            self.spec.expectations,
        )
        writer: asyncio.Task[list[SignalEvent]] | None = None
        # Batch k + 1 is read and decoded while batch k is computed: three stages in flight
        # (read, engine, write), each bounded to one batch, so memory stays O(batch). The last
        # batch also carries the end of input (the flush), so a run ends with one write, not two.
        reader = asyncio.ensure_future(asyncio.to_thread(_decoded, chunks, run.trace))
        last_progress = 0.0
        try:
            chunk = await reader
            while chunk is not None:
                reader = asyncio.ensure_future(asyncio.to_thread(_decoded, chunks, run.trace))
                result = await asyncio.to_thread(self._engine, run, chunk)
                following = await reader
                if following is None:
                    result = await asyncio.to_thread(self._engine_end, run, result)
                staged = self._stage(run, chunk, result, ended=following is None)
                if writer is not None:  # batch k is durable before batch k + 1 starts writing
                    for event in await writer:
                        yield event
                writer = asyncio.create_task(self._write(staged))
                if time.monotonic() - last_progress >= self.options.progress_interval_seconds:
                    last_progress = time.monotonic()
                    yield _progress(run, (chunk.file_index, len(files)), started)
                chunk = following
            if writer is not None:
                for event in await writer:
                    yield event
                writer = None
            else:  # nothing to read (an empty input, or a resume at its end): the flush alone
                empty = await asyncio.to_thread(self._engine_end, run, None)
                for event in await self._write(self._stage(run, None, empty, ended=True)):
                    yield event
        finally:
            await asyncio.gather(reader, *([writer] if writer is not None else []), return_exceptions=True)

    async def _begin(self, files: list[InputFile], run_id: str) -> _Run:
        checkpoint = await self._start_point(files)
        limits = DecodeLimits(
            now_ms=self.clock(),
            max_future_ms=self.options.max_future_ms,
            max_record_bytes=self.options.max_record_bytes,
            fields=self.spec.features,
        )
        return _Run(
            run_id=run_id,
            files=files,
            fingerprint=checkpoint.fingerprint,
            limits=limits,
            state=EngineState.from_bytes(checkpoint.state) if checkpoint.state else EngineState(),
            counters=dict.fromkeys(COUNTERS, 0) | checkpoint.counters,
            batch_no=checkpoint.next_batch,
            resumed_from=checkpoint.next_batch,
            file_index=checkpoint.file_index,
            row_offset=checkpoint.row_offset,
            total=await asyncio.to_thread(count_records, files),
        )

    def _engine(self, run: _Run, chunk: Chunk) -> BatchResult:
        """CPU half of a batch (a worker thread): the engine step only; the writer does the rest."""
        with span("headwater.signals.batch", parent=run.trace, batch=run.batch_no) as current:
            run.state, result = process_batch(run.state, chunk.frame, self.spec, traced=span)
            if current is not None:
                current.set_attributes(
                    {"events": result.events_in, "duplicates": result.duplicates, "rows": result.rows.height}
                )
        return result

    def _engine_end(self, run: _Run, result: BatchResult | None) -> BatchResult:
        """The end of input (the watermark to +inf), added to the last batch's result."""
        run.state, tail = flush(run.state, self.spec)
        return tail if result is None else combined(result, tail)

    def _stage(self, run: _Run, chunk: Chunk | None, result: BatchResult, *, ended: bool) -> _Staged:
        """Count a computed batch and say what its write carries (a checkpoint when one is due)."""
        if ended:
            position, status = (len(run.files), 0), "completed"
        else:
            assert chunk is not None  # only the end of input comes without a chunk
            position, status = (chunk.file_index, chunk.start + chunk.consumed), "running"
        checked = chunk.checked if chunk is not None else None
        count_batch(run.counters, result, invalid=chunk.invalid if chunk else 0, checked=checked)
        batch_no = run.batch_no
        run.batch_no += 1
        events = _batch_events(run, self.spec.name, batch_no, chunk, result)
        due = ended or time.monotonic() - run.last_checkpoint >= self.options.checkpoint_interval_seconds
        if due:
            run.last_checkpoint = time.monotonic()
        return _Staged(
            batch_no=batch_no,
            result=result,
            state=run.state,
            chunk=chunk.computed() if chunk is not None else None,
            files=run.files,
            events=events,
            checkpoint=(run.fingerprint, position, dict(run.counters), status) if due else None,
            trace=run.trace,
        )

    def _checkpoint(self, staged: _Staged) -> SignalCheckpoint | None:
        if staged.checkpoint is None:
            return None
        fingerprint_, position, counters, status = staged.checkpoint
        # A completed run never resumes (a re-run starts over), so its checkpoint keeps no engine
        # state, as a Spark run's does not: ~2 MB less to encode and commit at the end of a run.
        state = staged.state if status == "running" else EngineState()
        return signal_checkpoint(
            self.scope,
            fingerprint_,
            next_batch=staged.batch_no + 1,
            position=position,
            counters=counters,
            state=state.to_bytes(),
            status=status,
        )

    async def _write(self, staged: _Staged) -> list[SignalEvent]:
        """I/O half of a batch: offline parts (durable), then the online transaction, then the DLQ."""
        rows = staged.result.rows.height
        with span("headwater.signals.store", parent=staged.trace, batch=staged.batch_no, rows=rows):
            await self._store(staged)
        if staged.chunk is not None and staged.chunk.errors:
            await self._deliver_dead_letters()
        return staged.events

    async def _store(self, staged: _Staged) -> None:
        await commit_batch(
            online=self.online,
            offline=self.offline,
            spec=self.spec,
            scope=self.scope,
            files=staged.files,
            batch_no=staged.batch_no,
            result=staged.result,
            chunk=staged.chunk,
            checkpoint=lambda: self._checkpoint(staged),
        )

    async def iter_results(self) -> AsyncIterator[WindowsClosed]:
        # closed explicitly: see DocumentPipeline.iter_results
        async with contextlib.aclosing(self.stream_events()) as events:
            async for event in events:
                if isinstance(event, WindowsClosed):
                    yield event

    async def run_async(self) -> SignalRunCompleted:
        final: SignalRunCompleted | None = None
        async with contextlib.aclosing(self.stream_events()) as events:
            async for event in events:
                if isinstance(event, SignalRunCompleted):
                    final = event
        assert final is not None  # stream_events always ends with it
        return final

    def run(self) -> SignalRunCompleted:
        return asyncio.run(self.run_async())

    async def _start_point(self, files: list[InputFile]) -> SignalCheckpoint:
        """Resume an unfinished run over the same input and declaration; otherwise start over."""
        expected = fingerprint(files, self.spec.fingerprint(), self.options.batch_events)
        found = await self.online.load_checkpoint(self.scope)
        if found is not None and found.fingerprint == expected and found.status == "running":
            return found
        return signal_checkpoint(self.scope, expected, next_batch=0)

    async def _deliver_dead_letters(self) -> None:
        """Outbox: hand undelivered invalid records to the DLQ, then mark them delivered."""
        if self.dead_letters is None:
            return
        pending = await self.online.undelivered_invalid()
        if not pending:
            return
        # Each letter keeps its record as it was in the input, so it can be read and replayed.
        originals = await asyncio.to_thread(
            original_records, self.inputs, [str(item["input_ref"]) for item in pending]
        )
        delivered = []
        for item in pending:
            letter = DeadLetter(
                id=0,
                kind="signal",
                input_ref=item["input_ref"],
                source=letter_source(self.inputs, self.spec.name),
                stage="expectations" if str(item["reason"]).startswith(REASON_PREFIX) else "decode",
                error_type="InputError",
                message=f"{item['field']}: {item['reason']}",
                traceback="",
                attempts=1,
                created_at=datetime.fromtimestamp(self.clock() / 1000, tz=UTC).isoformat(),
                payload=originals.get(str(item["input_ref"])),
            )
            dlq_id = await self.dead_letters.add(letter)
            delivered.append((item["scope"], item["batch"], item["idx"], dlq_id))
        if delivered:
            await self.online.mark_delivered(delivered)


FEATURE_SET_MARK = "#feature_set="


def letter_source(inputs: Path, feature_set: str) -> str:
    """A signal letter's source: the absolute input (file or folder) and the feature set it was
    ingested into, which is what ``dlq replay`` runs again."""
    return f"{inputs.resolve()}{FEATURE_SET_MARK}{feature_set}"


def parse_letter_source(source: str) -> tuple[Path, str | None]:
    """(input, feature set) of :func:`letter_source`; a source without the mark is an input."""
    path, mark, name = source.rpartition(FEATURE_SET_MARK)
    return (Path(path), name) if mark else (Path(source), None)


def _batch_events(
    run: _Run, feature_set: str, batch_no: int, chunk: Chunk | None, result: BatchResult
) -> list[SignalEvent]:
    """What a batch reports once committed: each rejected record (decoding or a ``dlq``
    expectation), the expectations that failed, then the batch summary."""
    errors = chunk.errors if chunk is not None else []
    file_index = chunk.file_index if chunk is not None else 0
    events: list[SignalEvent] = [
        SignalRejected(
            run_id=run.run_id,
            input_ref=input_ref(run.files, file_index, e.row),
            field=e.field,
            reason=e.reason,
        )
        for e in errors
    ]
    checked = chunk.checked if chunk is not None else None
    if checked is not None:
        events.append(
            ExpectationsFailed(
                run_id=run.run_id,
                feature_set=feature_set,
                batch=batch_no,
                failures=list(checked.failures),
                dead_lettered=len(checked.rejected),
                newest_event_age_ms=checked.newest_event_age_ms,
            )
        )
    events.append(
        WindowsClosed(
            run_id=run.run_id,
            batch=batch_no,
            rows=result.rows.height,
            points=result.points.height,
            late=result.late.height,
            watermark_ms=run.state.watermark_ms if chunk else None,
        )
    )
    return events


def _progress(run: _Run, files: tuple[int, int], started: float) -> SignalProgress:
    elapsed = time.monotonic() - started
    seen = run.counters["events_seen"]
    eta = (run.total - seen) * elapsed / seen if run.total and seen else None
    return SignalProgress(
        run_id=run.run_id,
        events_seen=seen,
        expectations_failed=run.counters["expectations_failed"],
        events_total=run.total,
        files_done=files[0],
        files_total=files[1],
        eta_seconds=eta,
        elapsed_seconds=round(elapsed, 3),
    )


def _decoded(chunks: Iterator[Chunk], trace: Any) -> Chunk | None:
    """The next chunk, read and decoded (a worker thread), in a span of the run's."""
    release_freed_memory()  # (the batch before the one read now is computed and written)
    with span("headwater.signals.decode", parent=trace) as current:
        chunk = next(chunks, None)
        if current is not None and chunk is not None:
            current.set_attributes({"records": chunk.frame.height, "invalid": len(chunk.errors)})
        return chunk


def iter_batches(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """Slice an in-memory frame into micro-batches (tests and the stream worker's buffers)."""
    for offset in range(0, frame.height, size):
        yield frame.slice(offset, size)
