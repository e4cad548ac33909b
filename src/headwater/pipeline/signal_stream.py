"""Signals in stream mode: the backfill's engine (``process_batch``/``flush``), fed by a bus.

Each batch of messages is one micro-batch in delivery order: decode (a CloudEvent body is one
JSONL record to the same decoder; a batch message — the CloudEvents JSON batch format, an array —
is several, each validated and, if bad, dead-lettered alone), dedup, windows and points, then the
offline parts, then ONE online transaction with the rows and the checkpoint (engine state + the
positions of the batch), then the worker acks. Batches are committed in position order (below),
so the checkpoint keeps one high-water mark: every position up to it is committed. After a crash:
- a batch committed but not acked comes back (after newer ones, maybe): its positions are at
  or below the mark, so it is acked without effect (exactly-once even beyond the dedup horizon);
- a batch not committed comes back after the ack wait, maybe after newer messages: its
  positions were saved (the *intent*) before it was processed, so the restarted sink holds the
  newer messages back until the whole batch is there again, then replays it first, in order.
  The result equals an uninterrupted run (if the batch never comes back — dead-lettered,
  trimmed — the sink stops waiting after ``recovery_seconds``).
The watermark moves with event time only; an idle timeout or the end of a catch-up run
(``--exit-when-idle``) closes every open window (DESIGN §5.4). A stop by signal does not: the
windows stay in the checkpoint, so a restarted worker (a deploy) turns no on-time event late.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from pathlib import Path

import msgspec
import polars as pl

from headwater import cloudevents
from headwater.errors import InputError
from headwater.events import Event, ExpectationsFailed, WindowsClosed
from headwater.featuresets import Expectations, FeatureSetSpec, duration_label
from headwater.models import BatchCommit, SignalCheckpoint, sha256_hex, signal_checkpoint
from headwater.pipeline.faults import crash_point
from headwater.pipeline.signal_commit import commit_batch, count_batch
from headwater.pipeline.signal_inputs import InputFile
from headwater.pipeline.signals import COUNTERS, Clock, SignalOptions, wall_clock_ms
from headwater.pipeline.stream import Delivery, RejectedEvent
from headwater.ports import FeatureStore, OfflineFeatureStore
from headwater.stages.decode import (
    DecodeLimits,
    InvalidRecord,
    Record,
    decode_cloudevent_batch,
    decode_records,
    records_frame,
)
from headwater.stages.expectations import Checked, check_expectations
from headwater.stages.features import BatchResult, EngineState, flush, process_batch


class _StreamState(msgspec.Struct):
    engine: bytes
    committed_upto: tuple[int, int] | None


Position = tuple[int, int]


class SignalSink:
    """A StreamWorker sink that keeps one feature set up to date from one topic."""

    def __init__(
        self,
        *,
        spec: FeatureSetSpec,
        online: FeatureStore,
        offline: OfflineFeatureStore,
        topic: str,
        group: str,
        options: SignalOptions | None = None,
        clock: Clock = wall_clock_ms,
        recovery_seconds: float = 70.0,
    ) -> None:
        self.spec = spec
        self.online = online
        self.offline = offline
        self.topic = topic
        self.options = options or SignalOptions()
        self.clock = clock
        self.scope = sha256_hex(f"stream\x00{spec.name}\x00{spec.version}\x00{topic}\x00{group}")[:12]
        self.fingerprint = sha256_hex(spec.fingerprint())
        self.files = [InputFile(path=Path(f"{topic}.jsonl"), relpath=topic, size=0, mtime_ns=0)]
        self.state = EngineState()
        self.committed_upto: Position | None = None  # every position up to here is committed
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.next_batch = 0
        self.dirty = False  # events since the last flush: an idle timeout has something to close
        self.intent_scope = f"{self.scope}-intent"
        self.awaiting: set[Position] = set()
        self.recovery_seconds = recovery_seconds
        self.await_until = 0.0

    async def open(self) -> None:
        found = await self.online.load_checkpoint(self.scope)
        if found is None or found.fingerprint != self.fingerprint:
            return  # a new or re-declared feature set starts from a fresh engine
        saved = msgspec.msgpack.decode(found.state, type=_StreamState)
        self.state = EngineState.from_bytes(saved.engine) if saved.engine else EngineState()
        upto = saved.committed_upto
        self.committed_upto = (upto[0], upto[1]) if upto else None
        self.counters |= found.counters
        self.next_batch = found.next_batch
        self.dirty = found.status == "running"
        intent = await self.online.load_checkpoint(self.intent_scope)
        if intent is not None and intent.next_batch == self.next_batch:  # begun, never committed
            self.awaiting = {(p[0], p[1]) for p in msgspec.msgpack.decode(intent.state)}
            self.await_until = time.monotonic() + self.recovery_seconds

    async def close(self) -> None:
        return None

    async def handle(self, batch: list[Delivery]) -> list[Event]:
        limits = DecodeLimits(
            now_ms=self.clock(),
            max_future_ms=self.options.max_future_ms,
            max_record_bytes=self.options.max_record_bytes,
            fields=self.spec.features,
        )
        for delivery in batch:
            delivery.done = (
                self.committed_upto is not None and delivery.message.position <= self.committed_upto
            )
            if not delivery.message.body.strip():
                delivery.error = InputError("empty message body", field="$")
        redelivered = [d for d in batch if d.done and d.error is None and d.message.deliveries > 1]
        if redelivered:  # committed, ack lost: dead-letter its bad events again (at least once)
            await asyncio.to_thread(_decode_deliveries, redelivered, limits, self.spec.expectations)
        fresh = self._in_order([d for d in batch if not d.done and d.error is None])
        if not fresh:
            return []
        await self._save_intent([d.message.position for d in fresh])
        crash_point("stream_after_intent")
        frame, invalid, checked = await asyncio.to_thread(
            _decode_deliveries, fresh, limits, self.spec.expectations, limits.now_ms
        )
        # ``row`` keys the engine's joins: it must be unique and follow arrival order, so it is
        # the event's arrival number in this stream (late rows point at it as "topic:line N").
        frame = frame.with_columns(pl.col("row") + (self.counters["events_seen"] + 1))
        state, result = await asyncio.to_thread(process_batch, self.state, frame, self.spec)
        done = [d.message.position for d in fresh]
        batch_no = self.next_batch
        event = await self._commit(state, result, done, status="running", invalid=invalid, checked=checked)
        self.dirty = True
        if checked is None:
            return [event]
        failed = ExpectationsFailed(
            run_id=self.scope,
            feature_set=self.spec.name,
            batch=batch_no,
            failures=list(checked.failures),
            dead_lettered=len(checked.rejected),
            newest_event_age_ms=checked.newest_event_age_ms,
        )
        return [failed, event]

    def _in_order(self, fresh: list[Delivery]) -> list[Delivery]:
        """After a crash, the uncommitted batch goes first and whole: newer messages wait."""
        if not self.awaiting:
            return fresh
        present = {d.message.position for d in fresh}
        if not self.awaiting <= present and time.monotonic() < self.await_until:
            for delivery in fresh:
                delivery.deferred = True
            return []
        replay = sorted(
            (d for d in fresh if d.message.position in self.awaiting), key=lambda d: d.message.position
        )
        for delivery in fresh:
            delivery.deferred = delivery.message.position not in self.awaiting
        self.awaiting = set()
        return replay

    async def _save_intent(self, positions: list[Position]) -> None:
        intent = signal_checkpoint(
            self.intent_scope,
            self.fingerprint,
            next_batch=self.next_batch,
            state=msgspec.msgpack.encode(positions),
        )
        await self.online.commit(
            BatchCommit(
                scope=self.intent_scope,
                batch_no=self.next_batch,
                online_rows=[],
                online_points=[],
                invalid_rows=[],
                checkpoint=intent,
            )
        )

    async def idle(self, *, final: bool) -> list[Event]:
        """Quiet for the idle timeout, or stopping: close every open window (DESIGN §5.4)."""
        if not self.dirty or self.state.max_event_time is None:
            return []
        # Finite, so the watermark stays monotone across restarts: every window (and point)
        # holding an event so far ends before it, later events for them are late.
        watermark = self.state.max_event_time + max(w.size_ms for w in self.spec.windows)
        state, result = await asyncio.to_thread(flush, self.state, self.spec, watermark)
        event = await self._commit(state, result, [], status="flushed")
        self.dirty = False
        return [event]

    async def _commit(
        self,
        state: EngineState,
        result: BatchResult,
        positions: list[tuple[int, int]],
        *,
        status: str,
        invalid: int = 0,
        checked: Checked | None = None,
    ) -> WindowsClosed:
        """Offline parts (durable, deterministic names), then rows + checkpoint in one transaction."""
        batch_no = self.next_batch
        counters = dict(self.counters)
        count_batch(counters, result, invalid=invalid, checked=checked)
        upto = max([*positions, *([self.committed_upto] if self.committed_upto else [])], default=None)

        def checkpoint() -> SignalCheckpoint:
            saved = _StreamState(engine=state.to_bytes(), committed_upto=upto)
            return signal_checkpoint(
                self.scope,
                self.fingerprint,
                next_batch=batch_no + 1,
                counters=counters,
                state=msgspec.msgpack.encode(saved),
                status=status,
            )

        await commit_batch(
            online=self.online,
            offline=self.offline,
            spec=self.spec,
            scope=self.scope,
            files=self.files,
            batch_no=batch_no,
            result=result,
            chunk=None,
            checkpoint=checkpoint,
        )
        crash_point("stream_after_commit")
        self.state, self.counters, self.next_batch = state, counters, batch_no + 1
        self.committed_upto = upto
        return WindowsClosed(
            run_id=self.scope,
            batch=batch_no,
            rows=result.rows.height,
            points=result.points.height,
            late=result.late.height,
            watermark_ms=state.watermark_ms,
            feature_latency_seconds=_freshness(result.rows, self.clock()),
        )


def _decode_deliveries(
    deliveries: list[Delivery],
    limits: DecodeLimits,
    expectations: Expectations | None = None,
    now_ms: int | None = None,
) -> tuple[pl.DataFrame, int, Checked | None]:
    """One frame of the events of every delivery, in delivery order; a batch message (CloudEvents
    JSON batch format) adds each of its events. A bad single event marks its message ``error``
    (the message is dead-lettered), a bad event inside a batch goes to its ``rejected`` list;
    so does an event failing a ``dlq`` expectation (checked here, ``freshness`` against
    ``now_ms``). Returns the frame (``row``: the event's number in this batch, bad ones counted),
    the number of events that failed decoding and the expectations' outcome when any failed."""
    records: list[Record] = []
    rows: list[int] = []
    starts: list[int] = []  # the row of each delivery's first event
    seen = bad = 0
    for delivery in deliveries:
        starts.append(seen)
        body = delivery.message.body
        batched = cloudevents.is_batch(body)
        fast = decode_cloudevent_batch(body, limits) if batched else None
        if fast is not None:
            records.extend(fast)
            rows.extend(range(seen, seen + len(fast)))
            seen += len(fast)
            continue
        try:
            events = cloudevents.split_batch(body) if batched else [body]
        except InputError as exc:
            delivery.error = exc
            continue
        got, numbers, errors = decode_records(events, 0, limits)
        records.extend(got)
        rows.extend(seen + n for n in numbers)
        seen += len(events)
        bad += len(errors)
        for error in errors:
            problem = InputError(f"{error.field}: {error.reason}", field=error.field)
            if not batched:
                delivery.error = problem
            else:
                delivery.rejected.append(RejectedEvent(error.row, events[error.row], problem))
    frame = records_frame(records, rows, limits.fields)
    if not expectations:
        return frame, bad, None
    checked = check_expectations(frame, expectations, now_ms)
    _reject(checked.rejected, deliveries, starts)
    return checked.frame, bad, checked if checked.failures else None


def _reject(rejected: tuple[InvalidRecord, ...], deliveries: list[Delivery], starts: list[int]) -> None:
    """Events that failed a ``dlq`` expectation, dead-lettered as bad input is: a single-event
    message whole, an event of a batch message alone (with its own body)."""
    split: dict[int, list[bytes]] = {}
    for record in rejected:
        at = bisect.bisect_right(starts, record.row) - 1
        delivery = deliveries[at]
        problem = InputError(f"{record.field}: {record.reason}", field=record.field)
        body = delivery.message.body
        if not cloudevents.is_batch(body):
            delivery.error = problem
            continue
        events = split.setdefault(at, cloudevents.split_batch(body))
        index = record.row - starts[at]
        delivery.rejected.append(RejectedEvent(index, events[index], problem))
        delivery.rejected.sort(key=lambda r: r.index)


def _freshness(rows: pl.DataFrame, now_ms: int) -> dict[str, float] | None:
    """Seconds from the end of each window size's newest closed window until now (its commit)."""
    if rows.height == 0:
        return None
    ends = rows.group_by("window_ms").agg(
        (pl.col("window_start_ms") + pl.col("window_ms")).max().alias("end")
    )
    return {duration_label(int(size)): round((now_ms - int(end)) / 1000, 3) for size, end in ends.iter_rows()}
