"""The signal engine: one micro-batch in, emitted FeatureRows, late events and points out.

``process_batch(state, batch, spec)`` is pure: the state is a plain structure of Polars frames
and integers (``EngineState``), serializable with ``to_bytes`` for checkpoints, so a backfill, a
stream worker or a Spark task can stop anywhere and resume with identical output. Semantics are
DESIGN §5: per-event watermark (prefix max), per-window-size lateness, emission once ``W >= end``,
exact aggregates via per-window partials (count, sum, mean, M2, min, max) merged with Chan's
formula, never the naive sum of squares. Rows are emitted at the end of the batch in which their window
closed; later events in the same batch are late for it, so the values equal event-at-a-time.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import msgspec
import polars as pl

from headwater.featuresets import FeatureSetSpec
from headwater.stages import dedup, points
from headwater.stages.partials import (
    KEY,
    PARTIAL_SCHEMA,
    merge_into,
    merge_partials,
    partials,
    tumbling_partials,
)
from headwater.stages.windows import END_OF_INPUT, assign_windows, last_window_end_expr, watermark_before_expr

BATCH_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "event_time": pl.Int64(),
    "sequence": pl.Int64(),
    "value": pl.Float64(),
    "extra": pl.String(),
    "ce_key": pl.String(),
    "row": pl.Int64(),
}
LATE_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "event_time": pl.Int64(),
    "sequence": pl.Int64(),
    "value": pl.Float64(),
    "extra": pl.String(),
    "row": pl.Int64(),
    "window_ms": pl.Int64(),
    "window_start_ms": pl.Int64(),
    "watermark_ms": pl.Int64(),
    "policy": pl.String(),
    "reason": pl.String(),
}
FEATURE_ROW_KEY = ("entity_id", "feature_set", "version", "window_ms", "window_start_ms")
"""A FeatureRow's identity: a correction upserts the same key, so the online store and the
offline export collapse revisions on it."""
FEATURE_ROW_AGGREGATES = ("count", "sum", "mean", "min", "max", "std", "m2")
ROW_COLUMNS = [*FEATURE_ROW_KEY, *FEATURE_ROW_AGGREGATES, "revision"]
"""The engine's (and the offline ``windows`` dataset's) column order."""
ONLINE_ROW_COLUMNS = (*FEATURE_ROW_KEY, "revision", *FEATURE_ROW_AGGREGATES)
"""The online store's column order: everything after the key is what an upsert overwrites."""
_LATE_EVENT_COLUMNS = ("entity_id", "event_time", "sequence", "value", "extra", "row")
"""What a late event keeps of itself (LATE_SCHEMA's first columns), before why it was late."""
_FRAMES = ("identity", "cloudevents", "open_windows", "closed_windows", "pending", "history", "entities")


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class EngineState:
    """Everything the engine remembers between micro-batches; small and bounded by the horizons."""

    max_event_time: int | None = None
    lateness_ms: int = 2000
    identity: pl.DataFrame = field(
        default_factory=lambda: dedup.empty_keys({k: BATCH_SCHEMA[k] for k in dedup.IDENTITY})
    )
    cloudevents: pl.DataFrame = field(default_factory=lambda: dedup.empty_keys({"ce_key": pl.String()}))
    open_windows: pl.DataFrame = field(default_factory=lambda: _empty(PARTIAL_SCHEMA))
    closed_windows: pl.DataFrame = field(default_factory=lambda: _empty(PARTIAL_SCHEMA))
    pending: pl.DataFrame = field(default_factory=lambda: _empty(points.PENDING_SCHEMA))
    history: pl.DataFrame = field(default_factory=lambda: _empty(points.HISTORY_SCHEMA))
    entities: pl.DataFrame = field(default_factory=lambda: _empty(points.ENTITY_SCHEMA))

    @property
    def watermark_ms(self) -> int | None:
        return None if self.max_event_time is None else self.max_event_time - self.lateness_ms

    def to_bytes(self) -> bytes:
        frames = {}
        for name in _FRAMES:
            sink = io.BytesIO()
            getattr(self, name).write_ipc(sink, compression="lz4")
            frames[name] = sink.getvalue()
        header = {"max_event_time": self.max_event_time, "lateness_ms": self.lateness_ms}
        return msgspec.msgpack.encode({"header": header, "frames": frames})

    @classmethod
    def from_bytes(cls, data: bytes) -> EngineState:
        decoded = msgspec.msgpack.decode(data)
        frames = {name: pl.read_ipc(io.BytesIO(raw)) for name, raw in decoded["frames"].items()}
        header = decoded["header"]
        return cls(max_event_time=header["max_event_time"], lateness_ms=header["lateness_ms"], **frames)


@dataclass(frozen=True)
class BatchResult:
    """What one batch produced. ``rows`` are upserts (latest revision per key within the batch)."""

    rows: pl.DataFrame
    late: pl.DataFrame
    points: pl.DataFrame
    events_in: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    late_corrected: int = 0
    points_late: int = 0


def to_rows(frame: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Partials → FeatureRows: sample std (ddof = 1), null below two events."""
    std = pl.when(pl.col("count") >= 2).then((pl.col("m2") / (pl.col("count") - 1)).sqrt()).otherwise(None)
    return frame.with_columns(
        pl.lit(spec.name).alias("feature_set"),
        pl.lit(spec.version, dtype=pl.Int64).alias("version"),
        pl.col("window_start").alias("window_start_ms"),
        std.alias("std"),
    ).select(ROW_COLUMNS)


def _prepare(state: EngineState, batch: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    horizon = pl.lit(spec.dedup_horizon_ms, dtype=pl.Int64)
    return batch.with_columns(
        watermark_before_expr("event_time", spec.lateness_ms, state.max_event_time).alias("wm_before"),
        (last_window_end_expr("event_time", spec.windows) + horizon).alias("evict_at"),
    )


def _late_rows(assigned: pl.DataFrame, policy: str, reason: str) -> pl.DataFrame:
    return assigned.select(
        *_LATE_EVENT_COLUMNS,
        "window_ms",
        pl.col("window_start").alias("window_start_ms"),
        pl.col("wm_before").alias("watermark_ms"),
        pl.lit(policy).alias("policy"),
        pl.lit(reason).alias("reason"),
    )


def _assign_sliding(events: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """One row per (event, sliding window containing it); tumbling windows take the fast path."""
    slim = events.select("entity_id", "event_time", "value", "wm_before", "row")
    parts = [
        assign_windows(slim, window).with_columns(pl.lit(window.size_ms, dtype=pl.Int64).alias("window_ms"))
        for window in spec.windows
        if window.slide_ms != window.size_ms
    ]
    if not parts:
        return _empty(
            {**{k: slim.schema[k] for k in slim.columns}, "window_start": pl.Int64(), "window_ms": pl.Int64()}
        )
    return pl.concat(parts, how="vertical")


def _late_tumbling(events: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Assignments of events to tumbling windows that were already closed when they arrived."""
    parts = []
    for window in spec.windows:
        if window.slide_ms == window.size_ms:
            start = (pl.col("event_time") // window.size_ms) * window.size_ms
            late = events.filter(start + window.size_ms <= pl.col("wm_before"))
            parts.append(
                late.select(
                    "entity_id",
                    "event_time",
                    "value",
                    "wm_before",
                    "row",
                    start.alias("window_start"),
                    pl.lit(window.size_ms, dtype=pl.Int64).alias("window_ms"),
                )
            )
    return pl.concat(parts, how="vertical") if parts else _assign_sliding(events.clear(), spec)


def _split_windows(
    events: pl.DataFrame, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(on-time partials, correctable late partials, late-table rows) for every window family."""
    sliding = _assign_sliding(events, spec)
    end = pl.col("window_start") + pl.col("window_ms")
    late_mask = end <= pl.col("wm_before")
    tumbling = [w.size_ms for w in spec.windows if w.slide_ms == w.size_ms]
    on_time = merge_partials(tumbling_partials(events, tumbling), partials(sliding.filter(~late_mask)))
    # Late for a window means end <= W_{i-1}, and end > t, so only events with t < W_{i-1} (a
    # small share) can be late anywhere: the per-window checks and the join run on those alone.
    suspects = events.filter(pl.col("event_time") < pl.col("wm_before"))
    late = pl.concat([_late_tumbling(suspects, spec), sliding.filter(late_mask)], how="vertical")
    if late.height:  # the late rows carry the full event for the late table
        late = late.join(
            suspects.select("row", "sequence", "extra"), on="row", how="left", maintain_order="left"
        )
    else:
        late = late.with_columns(pl.lit(0, dtype=pl.Int64).alias("sequence"), pl.lit("").alias("extra"))
    if spec.late_policy != "correct":
        return on_time, _empty(PARTIAL_SCHEMA), _late_rows(late, spec.late_policy, "window_closed")
    beyond = end + spec.correct_horizon_ms <= pl.col("wm_before")
    fixes = partials(late.filter(~beyond)).with_columns(pl.col("count").alias("revision"))
    return on_time, fixes, _late_rows(late.filter(beyond), "drop", "beyond_correct_horizon")


def _close(
    state: EngineState, open_windows: pl.DataFrame, fixes: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Emit windows with ``end <= W``; under ``correct`` merge late partials: (rows, open, closed)."""
    ends = pl.col("window_start") + pl.col("window_ms")
    closing = open_windows.filter(ends <= watermark)
    still_open = open_windows.filter(ends > watermark)
    if spec.late_policy != "correct":
        return closing, still_open, state.closed_windows
    # Closed rows enter with revision + 1 and late partials with their count k, so after the merge
    # (minus 1) a corrected window has revision r + k and a window first seen late has k - 1.
    previous = pl.concat([state.closed_windows, closing], how="vertical_relaxed")
    bumped = previous.join(fixes.select(KEY), on=KEY, how="semi")
    merged = merge_partials(bumped.with_columns(pl.col("revision") + 1), fixes).with_columns(
        pl.col("revision") - 1
    )
    touched = pl.concat([closing.join(merged, on=KEY, how="anti"), merged], how="vertical_relaxed")
    closed = pl.concat([previous.join(touched, on=KEY, how="anti"), touched], how="vertical_relaxed")
    return touched, still_open, closed.filter(ends + spec.correct_horizon_ms > watermark)


def _point_step(
    state: EngineState, accepted: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, EngineState]:
    """Buffer on-time events, release those the watermark passed: (points, late rows, state)."""
    if not spec.points:
        return _empty(points.POINT_SCHEMA), _empty(LATE_SCHEMA), state
    late_mask = pl.col("event_time") < pl.col("wm_before")
    late = accepted.filter(late_mask).select(
        *_LATE_EVENT_COLUMNS,
        pl.lit(0, dtype=pl.Int64).alias("window_ms"),
        pl.col("event_time").alias("window_start_ms"),
        pl.col("wm_before").alias("watermark_ms"),
        pl.lit(spec.late_policy).alias("policy"),
        pl.lit("point_late").alias("reason"),
    )
    fresh = accepted.filter(~late_mask).select(list(points.PENDING_SCHEMA))
    pending = pl.concat([state.pending, fresh], how="vertical_relaxed") if state.pending.height else fresh
    released, pending, history, entities = points.release_points(
        pending,
        state.history,
        state.entities,
        watermark,
        alpha=spec.ewma_alpha,
        window_ms=spec.zscore_window_ms,
    )
    return released, late, replace(state, pending=pending, history=history, entities=entities)


def _window_step(
    state: EngineState, accepted: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, int, EngineState]:
    """Aggregate every window family, close what the watermark passed: (rows, late, corrected, state)."""
    on_time, fixes, late = _split_windows(accepted, spec)
    open_windows = merge_into(state.open_windows, on_time)
    emitted, still_open, closed = _close(state, open_windows, fixes, watermark, spec)
    corrected = int(fixes["count"].sum()) if fixes.height else 0
    new_state = replace(state, open_windows=still_open, closed_windows=closed)
    return to_rows(emitted, spec), late, corrected, new_state


def process_batch(
    state: EngineState, batch: pl.DataFrame, spec: FeatureSetSpec
) -> tuple[EngineState, BatchResult]:
    """One micro-batch (``BATCH_SCHEMA`` rows in arrival order): dedup, windows, points."""
    if batch.height == 0:
        return state, BatchResult(
            rows=to_rows(_empty(PARTIAL_SCHEMA), spec),
            late=_empty(LATE_SCHEMA),
            points=_empty(points.POINT_SCHEMA),
        )
    prepared = _prepare(state, batch, spec)
    duplicate = dedup.duplicate_mask(prepared, state.identity, state.cloudevents)
    accepted = prepared.filter(~duplicate)
    batch_max = int(batch["event_time"].max())  # type: ignore[arg-type]
    max_time = batch_max if state.max_event_time is None else max(state.max_event_time, batch_max)
    watermark = max_time - spec.lateness_ms
    state = replace(
        state,
        max_event_time=max_time,
        lateness_ms=spec.lateness_ms,
        identity=dedup.advance(state.identity, accepted, dedup.IDENTITY, watermark),
        cloudevents=dedup.advance(state.cloudevents, accepted, dedup.CLOUDEVENT, watermark),
    )
    # The window and point steps read disjoint parts of the state and mostly run in NumPy and
    # Polars without the GIL, so the point step runs in a helper thread beside the window step.
    with ThreadPoolExecutor(max_workers=1) as helper:
        point_step = helper.submit(_point_step, state, accepted, watermark, spec)
        rows, late, corrected, state = _window_step(state, accepted, watermark, spec)
        released, point_late, point_state = point_step.result()
    state = replace(
        state, pending=point_state.pending, history=point_state.history, entities=point_state.entities
    )
    window_late = late.height
    return state, BatchResult(
        rows=rows,
        late=pl.concat([late, point_late], how="vertical_relaxed"),
        points=released,
        events_in=batch.height,
        duplicates=int(duplicate.sum()),
        late_dropped=window_late,
        late_corrected=corrected,
        points_late=point_late.height,
    )


def flush(
    state: EngineState, spec: FeatureSetSpec, watermark: int = END_OF_INPUT
) -> tuple[EngineState, BatchResult]:
    """Advance the watermark without events (end of a backfill: +∞; a stream's idle timeout: a value).

    A finite advance is remembered as if an event at ``watermark + L`` had arrived, so the
    watermark stays monotone: a later event for a window closed here is late, never a reopening.
    """
    if watermark < END_OF_INPUT:
        floor = watermark + spec.lateness_ms
        state = replace(
            state, max_event_time=floor if state.max_event_time is None else max(state.max_event_time, floor)
        )
    empty_fixes = _empty(PARTIAL_SCHEMA)
    emitted, still_open, closed = _close(state, state.open_windows, empty_fixes, watermark, spec)
    state = replace(state, open_windows=still_open, closed_windows=closed)
    released = _empty(points.POINT_SCHEMA)
    if spec.points:
        released, pending, history, entities = points.release_points(
            state.pending,
            state.history,
            state.entities,
            watermark,
            alpha=spec.ewma_alpha,
            window_ms=spec.zscore_window_ms,
        )
        state = replace(state, pending=pending, history=history, entities=entities)
    return state, BatchResult(rows=to_rows(emitted, spec), late=_empty(LATE_SCHEMA), points=released)


def latest_rows(windows: pl.DataFrame) -> pl.DataFrame:
    """The offline ``windows`` history collapsed to one row per key: the highest revision, then the
    latest part (what ``features export`` and a release read; ``_part`` is the stored file's name)."""
    if windows.height == 0:
        return windows
    keys = list(FEATURE_ROW_KEY)
    order = [*keys, "revision", "_part"] if "_part" in windows.columns else [*keys, "revision"]
    return windows.sort(order).unique(subset=keys, keep="last", maintain_order=True)
