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

import functools
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import polars as pl

from headwater.featuresets import FeatureSetSpec, FieldSpec
from headwater.stages import dedup, points
from headwater.stages.partials import KEY, layout, merge_into, merge_partials, partials
from headwater.stages.tumbling import tumbling_partials
from headwater.stages.windows import END_OF_INPUT, assign_windows, last_window_end_expr, watermark_before_expr


def field_schema(fields: tuple[FieldSpec, ...]) -> dict[str, pl.DataType]:
    """The declared fields as event columns: numeric fields Float64, others String (a string as it
    is, any other JSON value as canonical JSON text); null where an event lacks the field."""
    return {f.name: pl.Float64() if f.numeric else pl.String() for f in fields}


def batch_schema(fields: tuple[FieldSpec, ...]) -> dict[str, pl.DataType]:
    """The engine's input: one row per decoded event, in arrival order. ``extra`` is the canonical
    JSON of the payload fields no feature uses (part of the event's identity), ``row`` its place
    in the input (line or row number)."""
    return {
        "entity_id": pl.String(),
        "event_time": pl.Int64(),
        "sequence": pl.Int64(),
        **field_schema(fields),
        "extra": pl.String(),
        "ce_key": pl.String(),
        "row": pl.Int64(),
    }


FEATURE_ROW_KEY = ("entity_id", "feature_set", "version", "window_ms", "window_start_ms")
"""A FeatureRow's identity: a correction upserts the same key, so the online store and the
offline export collapse revisions on it."""
ONLINE_ROW_COLUMNS = (*FEATURE_ROW_KEY, "revision", "features")
"""The online store's window row: everything after the key is what an upsert overwrites;
``features`` is the JSON object of the declared columns."""
STATE_COLUMN = "_state"
"""Under ``hold``, a window row also carries its partials (a struct): a release merges held
events into them exactly, as ``correct`` merges late partials. Not a feature: never served."""
_LATE_REASONS: dict[str, pl.DataType] = {
    "window_ms": pl.Int64(),
    "window_start_ms": pl.Int64(),
    "watermark_ms": pl.Int64(),
    "policy": pl.String(),
    "reason": pl.String(),
}
_FRAMES = ("identity", "cloudevents", "open_windows", "closed_windows", "pending", "history", "entities")


def event_columns(spec: FeatureSetSpec) -> list[str]:
    """What a late event keeps of itself, before why it was late."""
    return ["entity_id", "event_time", "sequence", *(f.name for f in spec.features), "extra", "row"]


def late_schema(spec: FeatureSetSpec) -> dict[str, pl.DataType]:
    schema = batch_schema(spec.features)
    return {**{c: schema[c] for c in event_columns(spec)}, **_LATE_REASONS}


def row_columns(spec: FeatureSetSpec) -> list[str]:
    """A window row's columns (the offline ``windows`` dataset's order): the key, the declared
    ``{field}_{aggregation}`` columns, the revision (and the partials under ``hold``)."""
    state = [STATE_COLUMN] if spec.late_policy == "hold" else []
    return [*FEATURE_ROW_KEY, *spec.window_columns, "revision", *state]


def _point_fields(spec: FeatureSetSpec) -> tuple[str, ...]:
    return tuple(f.name for f in spec.point_fields)


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class EngineState:
    """Everything the engine remembers between micro-batches; small and bounded by the horizons.

    A fresh state's frames are empty and untyped: ``_typed`` gives them the feature set's columns
    on first use, so a state needs no spec to be created or restored.
    """

    max_event_time: int | None = None
    lateness_ms: int = 2000
    identity: pl.DataFrame = field(default_factory=pl.DataFrame)
    cloudevents: pl.DataFrame = field(default_factory=lambda: dedup.empty_keys({"ce_key": pl.String()}))
    open_windows: pl.DataFrame = field(default_factory=pl.DataFrame)
    closed_windows: pl.DataFrame = field(default_factory=pl.DataFrame)
    pending: pl.DataFrame = field(default_factory=pl.DataFrame)
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


def _typed(state: EngineState, spec: FeatureSetSpec) -> EngineState:
    """Give a fresh state's untyped frames the feature set's columns."""
    if state.open_windows.width and state.pending.width and state.identity.width:
        return state
    schema = batch_schema(spec.features)
    partial = layout(spec).empty()
    return replace(
        state,
        identity=state.identity
        if state.identity.width
        else dedup.empty_keys({k: schema[k] for k in dedup.identity(spec)}),
        open_windows=state.open_windows if state.open_windows.width else partial,
        closed_windows=state.closed_windows if state.closed_windows.width else partial,
        pending=state.pending if state.pending.width else _empty(points.pending_schema(_point_fields(spec))),
    )


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


def _column(spec_field: str, aggregation: str) -> pl.Expr:
    col = functools.partial(_part, spec_field)
    count = col("count")
    match aggregation:
        case "count":
            return count
        case "sum":
            return pl.when(count > 0).then(col("sum"))
        case "std":  # sample std (ddof = 1), null below two values
            return pl.when(count >= 2).then((col("m2") / (count - 1)).sqrt())
        case "count_distinct":
            return col("distinct").list.len().cast(pl.Int64).fill_null(0)
        case _:  # mean, min, max, last
            return col(aggregation)


def _part(name: str, part: str) -> pl.Expr:
    return pl.col(f"{name}|{part}")


def to_rows(frame: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Partials → window rows with the declared ``{field}_{aggregation}`` columns."""
    columns = [
        _column(f.name, a).alias(f"{f.name}_{a}") for f in spec.features for a in f.window_aggregations
    ]
    state = (
        [pl.struct([c for c in layout(spec).schema if c not in KEY]).alias(STATE_COLUMN)]
        if spec.late_policy == "hold"
        else []
    )
    return frame.select(
        "entity_id",
        pl.lit(spec.name).alias("feature_set"),
        pl.lit(spec.version, dtype=pl.Int64).alias("version"),
        "window_ms",
        pl.col("window_start").alias("window_start_ms"),
        *columns,
        "revision",
        *state,
    )


def _prepare(state: EngineState, batch: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Add each event's ``W_{i-1}`` and dedup horizon. A batch that already carries ``wm_before``
    keeps it: a parallel engine (Spark) computes the global prefix max over the whole arrival
    order and hands each task the events of some entities, which no task could derive alone."""
    horizon = pl.lit(spec.dedup_horizon_ms, dtype=pl.Int64)
    watermark = (
        pl.col("wm_before")
        if "wm_before" in batch.columns
        else watermark_before_expr("event_time", spec.lateness_ms, state.max_event_time)
    )
    return batch.with_columns(
        watermark.alias("wm_before"),
        (last_window_end_expr("event_time", spec.windows) + horizon).alias("evict_at"),
    )


def _late_rows(assigned: pl.DataFrame, spec: FeatureSetSpec, policy: str, reason: str) -> pl.DataFrame:
    return assigned.select(
        *event_columns(spec),
        "window_ms",
        pl.col("window_start").alias("window_start_ms"),
        pl.col("wm_before").alias("watermark_ms"),
        pl.lit(policy).alias("policy"),
        pl.lit(reason).alias("reason"),
    )


def _slim(events: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """What a window assignment carries of an event (``extra`` joins back only for late rows)."""
    return events.select(
        "entity_id", "event_time", "sequence", *(f.name for f in spec.features), "wm_before", "row"
    )


def _assign_sliding(events: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """One row per (event, sliding window containing it); tumbling windows take the fast path."""
    slim = _slim(events, spec)
    parts = [
        assign_windows(slim, window).with_columns(pl.lit(window.size_ms, dtype=pl.Int64).alias("window_ms"))
        for window in spec.windows
        if window.slide_ms != window.size_ms
    ]
    if not parts:
        return _empty({**slim.schema, "window_start": pl.Int64(), "window_ms": pl.Int64()})
    return pl.concat(parts, how="vertical")


def _late_tumbling(events: pl.DataFrame, spec: FeatureSetSpec) -> pl.DataFrame:
    """Assignments of events to tumbling windows that were already closed when they arrived."""
    parts = []
    slim = _slim(events, spec)
    for window in spec.windows:
        if window.slide_ms == window.size_ms:
            start = (pl.col("event_time") // window.size_ms) * window.size_ms
            late = slim.filter(start + window.size_ms <= pl.col("wm_before"))
            parts.append(
                late.with_columns(
                    start.alias("window_start"), pl.lit(window.size_ms, dtype=pl.Int64).alias("window_ms")
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
    on_time = merge_partials(
        spec, tumbling_partials(events, tumbling, spec), partials(sliding.filter(~late_mask), spec)
    )
    # Late for a window means end <= W_{i-1}, and end > t, so only events with t < W_{i-1} (a
    # small share) can be late anywhere: the per-window checks and the join run on those alone.
    suspects = events.filter(pl.col("event_time") < pl.col("wm_before"))
    late = pl.concat([_late_tumbling(suspects, spec), sliding.filter(late_mask)], how="vertical")
    late = late.join(suspects.select("row", "extra"), on="row", how="left", maintain_order="left")
    if spec.late_policy != "correct":
        return on_time, layout(spec).empty(), _late_rows(late, spec, spec.late_policy, "window_closed")
    beyond = end + spec.correct_horizon_ms <= pl.col("wm_before")
    fixes = partials(late.filter(~beyond), spec).with_columns(pl.col("n").alias("revision"))
    return on_time, fixes, _late_rows(late.filter(beyond), spec, "drop", "beyond_correct_horizon")


def _close(
    state: EngineState, open_windows: pl.DataFrame, fixes: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Emit windows with ``end <= W``; under ``correct`` merge late partials: (rows, open, closed)."""
    ends = pl.col("window_start") + pl.col("window_ms")
    closing = open_windows.filter(ends <= watermark)
    still_open = open_windows.filter(ends > watermark)
    if spec.late_policy != "correct":
        return closing, still_open, state.closed_windows
    # Closed rows enter with revision + 1 and late partials with their event count k, so after the
    # merge (minus 1) a corrected window has revision r + k and a window first seen late has k - 1.
    previous = pl.concat([state.closed_windows, closing], how="vertical_relaxed")
    bumped = previous.join(fixes.select(KEY), on=KEY, how="semi")
    merged = merge_partials(spec, bumped.with_columns(pl.col("revision") + 1), fixes).with_columns(
        pl.col("revision") - 1
    )
    touched = pl.concat([closing.join(merged, on=KEY, how="anti"), merged], how="vertical_relaxed")
    closed = pl.concat([previous.join(touched, on=KEY, how="anti"), touched], how="vertical_relaxed")
    return touched, still_open, closed.filter(ends + spec.correct_horizon_ms > watermark)


def _release(state: EngineState, watermark: int, spec: FeatureSetSpec) -> tuple[pl.DataFrame, EngineState]:
    """Release the buffered points the watermark passed: (points, state)."""
    fields = _point_fields(spec)
    if not fields:
        return _empty(points.point_schema(fields)), state
    released, pending, history, entities = points.release_points(
        state.pending,
        state.history,
        state.entities,
        watermark,
        fields=fields,
        alpha=spec.ewma_alpha,
        window_ms=spec.zscore_window_ms,
    )
    return released, replace(state, pending=pending, history=history, entities=entities)


def _point_step(
    state: EngineState, accepted: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, EngineState]:
    """Buffer on-time events, release those the watermark passed: (points, late rows, state)."""
    fields = _point_fields(spec)
    if not fields:
        return _empty(points.point_schema(fields)), _empty(late_schema(spec)), state
    lacking = any(accepted[f].null_count() for f in fields)  # else every event carries a point field
    carrying = (
        accepted.filter(pl.any_horizontal(pl.col(f).is_not_null() for f in fields)) if lacking else accepted
    )
    late_mask = pl.col("event_time") < pl.col("wm_before")
    late = carrying.filter(late_mask).select(
        *event_columns(spec),
        pl.lit(0, dtype=pl.Int64).alias("window_ms"),
        pl.col("event_time").alias("window_start_ms"),
        pl.col("wm_before").alias("watermark_ms"),
        pl.lit(spec.late_policy).alias("policy"),
        pl.lit("point_late").alias("reason"),
    )
    fresh = carrying.filter(~late_mask).select(list(points.pending_schema(fields)))
    pending = pl.concat([state.pending, fresh], how="vertical_relaxed") if state.pending.height else fresh
    released, state = _release(replace(state, pending=pending), watermark, spec)
    return released, late, state


def _window_step(
    state: EngineState, accepted: pl.DataFrame, watermark: int, spec: FeatureSetSpec
) -> tuple[pl.DataFrame, pl.DataFrame, int, EngineState]:
    """Aggregate every window family, close what the watermark passed: (rows, late, corrected, state)."""
    on_time, fixes, late = _split_windows(accepted, spec)
    open_windows = merge_into(state.open_windows, on_time, spec)
    emitted, still_open, closed = _close(state, open_windows, fixes, watermark, spec)
    corrected = int(fixes["n"].sum()) if fixes.height else 0
    new_state = replace(state, open_windows=still_open, closed_windows=closed)
    return to_rows(emitted, spec), late, corrected, new_state


def _nothing(spec: FeatureSetSpec) -> BatchResult:
    return BatchResult(
        rows=to_rows(layout(spec).empty(), spec),
        late=_empty(late_schema(spec)),
        points=_empty(points.point_schema(_point_fields(spec))),
    )


Traced = Callable[..., AbstractContextManager[Any]]


def _untraced(name: str, **attributes: object) -> AbstractContextManager[None]:
    return nullcontext()


def process_batch(
    state: EngineState, batch: pl.DataFrame, spec: FeatureSetSpec, traced: Traced = _untraced
) -> tuple[EngineState, BatchResult]:
    """One micro-batch (``batch_schema`` rows in arrival order): dedup, windows, points.
    ``traced(name, **attributes)`` brackets the dedup and the window steps (the pipeline hands
    in its tracing; the stage stays free of it)."""
    state = _typed(state, spec)
    if batch.height == 0:
        return state, _nothing(spec)
    with traced("headwater.signals.dedup", events=batch.height):
        prepared = _prepare(state, batch, spec)
        duplicate = dedup.duplicate_mask(prepared, state.identity, state.cloudevents, dedup.identity(spec))
        accepted = prepared.filter(~duplicate)
    batch_max = int(batch["event_time"].max())  # type: ignore[arg-type]
    max_time = batch_max if state.max_event_time is None else max(state.max_event_time, batch_max)
    watermark = max_time - spec.lateness_ms
    state = replace(
        state,
        max_event_time=max_time,
        lateness_ms=spec.lateness_ms,
        identity=dedup.advance(state.identity, accepted, dedup.identity(spec), watermark),
        cloudevents=dedup.advance(state.cloudevents, accepted, dedup.CLOUDEVENT, watermark),
    )
    # The window and point steps read disjoint parts of the state and mostly run in NumPy and
    # Polars without the GIL, so the point step runs in a helper thread beside the window step.
    with (
        traced("headwater.signals.windows", events=accepted.height),
        ThreadPoolExecutor(max_workers=1) as helper,
    ):
        point_step = helper.submit(_point_step, state, accepted, watermark, spec)
        rows, late, corrected, state = _window_step(state, accepted, watermark, spec)
        released, point_late, point_state = point_step.result()
    state = replace(
        state, pending=point_state.pending, history=point_state.history, entities=point_state.entities
    )
    return state, BatchResult(
        rows=rows,
        late=pl.concat([late, point_late], how="vertical_relaxed"),
        points=released,
        events_in=batch.height,
        duplicates=int(duplicate.sum()),
        late_dropped=late.height,
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
    state = _typed(state, spec)
    if watermark < END_OF_INPUT:
        floor = watermark + spec.lateness_ms
        state = replace(
            state, max_event_time=floor if state.max_event_time is None else max(state.max_event_time, floor)
        )
    emitted, still_open, closed = _close(state, state.open_windows, layout(spec).empty(), watermark, spec)
    state = replace(state, open_windows=still_open, closed_windows=closed)
    released, state = _release(state, watermark, spec)
    return state, replace(_nothing(spec), rows=to_rows(emitted, spec), points=released)


def combined(first: BatchResult, then: BatchResult) -> BatchResult:
    """Two consecutive results as one (a batch and the flush after it). Their rows have distinct
    keys (a window is emitted when it closes, and a closed window only changes by correction,
    which a flush never makes) and their points distinct events, so nothing is counted twice;
    the online serving view then picks each entity's newest window from both at once."""
    return BatchResult(
        rows=pl.concat([first.rows, then.rows], how="vertical_relaxed"),
        late=pl.concat([first.late, then.late], how="vertical_relaxed"),
        points=pl.concat([first.points, then.points], how="vertical_relaxed"),
        events_in=first.events_in + then.events_in,
        duplicates=first.duplicates + then.duplicates,
        late_dropped=first.late_dropped + then.late_dropped,
        late_corrected=first.late_corrected + then.late_corrected,
        points_late=first.points_late + then.points_late,
    )


def latest_rows(windows: pl.DataFrame) -> pl.DataFrame:
    """The offline ``windows`` history collapsed to one row per key: the highest revision, then the
    latest part (what ``features export`` and a release read; ``_part`` is the stored file's name)."""
    if windows.height == 0:
        return windows
    keys = list(FEATURE_ROW_KEY)
    order = [*keys, "revision", "_part"] if "_part" in windows.columns else [*keys, "revision"]
    return windows.sort(order).unique(subset=keys, keep="last", maintain_order=True)
