"""Decode and validate signals: JSONL, CSV, CloudEvents JSON and Arrow (Parquet) → one batch frame.

Strict by design: a record is accepted only if every field the feature set uses has the right
type and range; anything else becomes an :class:`InvalidRecord` naming the row, the field path,
the reason and the value, which the pipeline dead-letters. A bad record must never fail its
whole batch, so even out-of-range integers are rejected here rather than left to the frame.
Nothing is coerced: ``"12.5"`` is not a number, a float is not an epoch, NaN/±Inf are rejected,
a timestamp without a zone or with sub-millisecond digits is rejected.

A feature set declares several payload fields; an event needs at least one of them (a sensor
may report its temperature and its humidity in separate messages), each absent one is null.
Numeric fields must be finite numbers; the others take any JSON value, kept as text (a string
as it is, anything else as canonical JSON) so that equal values compare equal in every engine.
Payload fields the feature set does not declare are carried, canonically, in ``extra`` (part of
an event's identity) and never judged, whatever their type: adding a field to a producer must
not dead-letter its events.

JSONL is decoded a batch at a time (:func:`decode_json_lines`): each line by msgspec into a
struct typed so that the decode itself refuses what the per-record checks would (the envelope's
fields required, a numeric field a float, the payload's other keys those already seen, each
learned once), then column-wise into the frame. A batch this fast path cannot decide (a bad
line, a CloudEvent, a payload key it cannot learn, signals with and without ``payload`` in one
chunk, a line over the size limit) is decoded record by record instead, which names each bad
record; both ways give the same frame, ``extra`` included, bit for bit. CSV and the events of
a stream are decoded record by record; Arrow input is validated column-wise.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

import msgspec
import polars as pl
import pyarrow as pa
from polars.datatypes import DataTypeClass

from headwater.featuresets import DEFAULT_FEATURES, FieldSpec
from headwater.models import canonical_json
from headwater.stages.features import batch_schema

MAX_ENTITY_CHARS = 256
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # checked in the decode itself: free


class InvalidRecord(msgspec.Struct, frozen=True, kw_only=True):
    row: int  # 1-based line number for text, 0-based row index for Parquet
    field: str  # a JSON path such as "$.event_time"
    reason: str


class DecodeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """``now_ms`` comes from the injected clock: the only wall-clock input to decoding."""

    now_ms: int
    max_future_ms: int = 86_400_000
    max_record_bytes: int = 65_536
    fields: tuple[FieldSpec, ...] = DEFAULT_FEATURES


class _Envelope(msgspec.Struct, kw_only=True):
    entity_id: str | None = None
    event_time: str | _Int64 | None = None
    sequence: _Int64 | None = None
    value: Any = None  # the payload {"value": value}, checked as the payload is
    payload: dict[str, Any] | None = None
    source: str | None = None
    trace_id: str | None = None
    specversion: str | None = None
    id: str | None = None
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b""))


_envelope = msgspec.json.Decoder(_Envelope)
Record = tuple[Any, ...]
"""``(entity_id, event_time_ms, sequence, *one value per declared field, extra, ce_key)``."""


class _Rejected(Exception):  # internal control flow, never escapes this module
    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Fields:
    """What decoding needs of the declared fields, worked out once per batch, not per event."""

    pairs: tuple[tuple[str, bool], ...]  # (name, numeric) in declaration order
    names: frozenset[str]
    numeric: frozenset[str]
    missing_path: str  # after "$.payload" when an event has none of them
    missing_reason: str
    value_at: int  # the index of the field "value" (the top-level value shortcut), else -1


@lru_cache(maxsize=32)
def _declared(fields: tuple[FieldSpec, ...]) -> _Fields:
    names = [f.name for f in fields]
    if len(names) == 1:
        path, reason = f".{names[0]}", "missing required field"
    else:
        path, reason = "", f"none of the feature set's fields is present ({', '.join(names)})"
    return _Fields(
        pairs=tuple((f.name, f.numeric) for f in fields),
        names=frozenset(names),
        numeric=frozenset(f.name for f in fields if f.numeric),
        missing_path=path,
        missing_reason=reason,
        value_at=names.index("value") if "value" in names else -1,
    )


def parse_event_time(value: object, path: str = "$.event_time") -> int:
    """RFC 3339 with a zone (``Z`` or ``±hh:mm``) or integer epoch milliseconds → epoch ms."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Rejected(
            field=path, reason=f"expected RFC 3339 string or epoch milliseconds, got {type(value).__name__}"
        )
    if isinstance(value, int):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Rejected(field=path, reason=f"not an RFC 3339 timestamp: {value[:64]!r}") from None
    if "T" not in value.upper() or parsed.tzinfo is None:
        raise _Rejected(field=path, reason=f"RFC 3339 needs a date, a time and a zone: {value[:64]!r}")
    if parsed.microsecond % 1000:
        raise _Rejected(field=path, reason="sub-millisecond precision would be truncated")
    return int(parsed.timestamp()) * 1000 + parsed.microsecond // 1000


def _check_number(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise _Rejected(field=path, reason="not a finite number")
    return value


def _number(value: object, path: str) -> float:
    """A numeric field's value: a JSON number (an integer is widened), finite; a string, a
    boolean, null or an object is the producer's mistake, reported with what it sent."""
    if type(value) is float:
        return _check_number(value, path)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = msgspec.json.encode(value).decode()
        shown = shown if len(shown) <= 64 else shown[:61] + "..."
        raise _Rejected(field=path, reason=f"expected a finite number, got {shown}")
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits: JSON allows it, a float does not
        raise _Rejected(field=path, reason="not a finite number") from None


_ABSENT = object()


def _payload(env: _Envelope, prefix: str, declared: _Fields, out: list[Any]) -> None:
    """Appends one value per declared field, then the canonical JSON of the other payload fields
    (or "")."""
    payload = env.payload
    if payload is None:
        _value_shortcut(env.value, prefix, declared, out)
        return
    keys = present = 0
    for name, numeric in declared.pairs:
        value = payload.get(name, _ABSENT)
        if value is _ABSENT:
            out.append(None)
            continue
        keys += 1
        if numeric:
            if type(value) is not float:  # (a JSON float is finite: msgspec rejects 1e999)
                value = _number(value, f"{prefix}.payload.{name}")
            out.append(value)
            present += 1
        elif value is not None:
            out.append(value if type(value) is str else canonical_json(value).decode())
            present += 1
        else:
            out.append(None)
    if not present:
        raise _Rejected(field=f"{prefix}.payload{declared.missing_path}", reason=declared.missing_reason)
    if keys == len(payload):
        out.append("")
    else:
        out.append(canonical_json({k: v for k, v in payload.items() if k not in declared.names}).decode())


def _value_shortcut(value: Any, prefix: str, declared: _Fields, out: list[Any]) -> None:
    """A signal without ``payload`` but with ``value``: the payload ``{"value": value}``, whose
    errors name ``$.value``, where the value is."""
    if value is None:
        raise _Rejected(field=f"{prefix}.value", reason="missing required field (value or payload)")
    at = declared.value_at
    if at < 0:
        raise _Rejected(field=f"{prefix}.payload{declared.missing_path}", reason=declared.missing_reason)
    if declared.pairs[at][1]:
        if type(value) is not float:
            value = _number(value, f"{prefix}.value")
    elif type(value) is not str:
        value = canonical_json(value).decode()
    if len(declared.pairs) == 1:
        out.append(value)
    else:
        out.extend(value if i == at else None for i in range(len(declared.pairs)))
    out.append("")


def _record(line: bytes, limits: DecodeLimits, declared: _Fields) -> Record:
    if len(line) > limits.max_record_bytes:
        raise _Rejected(
            field="$", reason=f"record of {len(line)} bytes exceeds the {limits.max_record_bytes}-byte limit"
        )
    env = _decode(line, "$")
    if env.specversion is None:
        return _signal(env, "$", None, limits, declared)
    if env.id is None or env.source is None or not bytes(env.data):
        raise _Rejected(field="$", reason="CloudEvent needs id, source and data")
    return _signal(
        _decode(bytes(env.data), "$.data"), "$.data", f"{env.source}\x00{env.id}", limits, declared
    )


def _signal(
    env: _Envelope, prefix: str, ce_key: str | None, limits: DecodeLimits, declared: _Fields
) -> Record:
    """The checks every decoded signal passes, whichever way it was decoded."""
    entity, sequence = env.entity_id, env.sequence
    if entity is None or env.event_time is None or sequence is None:
        name = "entity_id" if entity is None else "event_time" if env.event_time is None else "sequence"
        raise _Rejected(field=f"{prefix}.{name}", reason="missing required field")
    if not entity or len(entity) > MAX_ENTITY_CHARS:
        raise _Rejected(field=f"{prefix}.entity_id", reason=f"must be 1 to {MAX_ENTITY_CHARS} characters")
    t = env.event_time
    if type(t) is not int:  # (an int is epoch ms already: skip the call on the hot path)
        t = parse_event_time(t, f"{prefix}.event_time")
    if t > limits.now_ms + limits.max_future_ms:
        raise _Rejected(
            field=f"{prefix}.event_time",
            reason=f"{t} ms is more than {limits.max_future_ms} ms in the future",
        )
    record: list[Any] = [entity, t, sequence]
    _payload(env, prefix, declared, record)
    record.append(ce_key)
    return tuple(record)


def _decode(data: bytes, path: str) -> _Envelope:
    try:
        return _envelope.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where = text.rsplit(" - at `", 1)
        field = where[1].rstrip("`").replace("$", path, 1) if len(where) == 2 else path
        raise _Rejected(field=field, reason=where[0]) from None
    except msgspec.DecodeError as exc:
        raise _Rejected(field=path, reason=f"malformed JSON: {exc}") from None


def records_frame(records: list[Record], rows: list[int], fields: tuple[FieldSpec, ...]) -> pl.DataFrame:
    """The batch frame (:func:`headwater.stages.features.batch_schema`) of decoded records."""
    schema = batch_schema(fields)
    names = [name for name in schema if name != "row"]
    columns: list[Any] = list(zip(*records, strict=True)) if records else [() for _ in names]
    return pl.DataFrame({**dict(zip(names, columns, strict=True)), "row": rows}, schema=schema)


def decode_records(
    lines: Iterable[bytes], first_line: int, limits: DecodeLimits
) -> tuple[list[Record], list[int], list[InvalidRecord]]:
    """(records, their line numbers, the rejected lines); blank lines are skipped."""
    declared = _declared(limits.fields)
    records, rows, errors = [], [], []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            records.append(_record(line, limits, declared))
            rows.append(number)
        except _Rejected as exc:
            errors.append(InvalidRecord(row=number, field=exc.field, reason=exc.reason))
    return records, rows, errors


def decode_json_lines(
    lines: Iterable[bytes], first_line: int, limits: DecodeLimits
) -> tuple[pl.DataFrame, list[InvalidRecord]]:
    """JSONL (one signal or CloudEvent per line; blank lines are skipped). A batch of plain
    signals takes the columnar fast path (:func:`_fast_json_lines`); a batch it cannot decide
    takes the per-record path, which names each bad record: both give the same frame."""
    batch = lines if isinstance(lines, list) else list(lines)
    frame = _fast_json_lines(batch, first_line, limits)
    if frame is not None:
        return frame, []
    records, rows, errors = decode_records(batch, first_line, limits)
    return records_frame(records, rows, limits.fields), errors


# JSONL fast path (see decode_json_lines). Each line is decoded, by msgspec as on the per-record
# path, into a struct typed so that the decode itself rejects what the per-record checks would
# (a numeric field is a float, the envelope's fields are required...); the values then go to
# polars a chunk at a time (the objects of a chunk die before the next chunk's are made, so
# memory stays warm), and the column-wise checks and ``extra`` run once on the whole batch.

_CHUNK = 4096
_FAST_KEYS = 64  # undeclared payload keys learned per feature set, at most
_FAST_TRIES = 4  # decodes of one chunk (a chunk with undeclared keys not seen yet costs one more)
_UNKNOWN_KEY = ("Object contains unknown field `", "` - at `$.payload`")
_learned: dict[tuple[FieldSpec, ...], tuple[str, ...]] = {}
_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')  # what JSON writes escaped in a string
_sorted_json = msgspec.json.Encoder(order="sorted")  # canonical_json's encoder


@dataclass(frozen=True, slots=True)
class _FastPlan:
    """The typed decode of one shape of line: signals with a payload, whose struct has the
    declared fields and the undeclared keys learned so far (any other key fails the decode,
    which then learns it), or signals with a top-level ``value`` and no payload."""

    decode: Callable[[bytes], Any]
    by_value: bool
    declared: tuple[tuple[str, bool], ...]  # (name, numeric)
    undeclared: tuple[str, ...]  # keys
    read: Callable[[list[Any]], tuple[list[Any], ...]]  # payloads → one list per field, then per key


@lru_cache(maxsize=64)
def _fast_plan(fields: tuple[FieldSpec, ...], keys: tuple[str, ...], by_value: bool) -> _FastPlan | None:
    """A numeric field is a float: msgspec widens an integer exactly as ``float()`` does and
    rejects one a float cannot hold; NaN, which JSON cannot write, stands for an absent one.
    An absent undeclared key is UNSET, so that a JSON null stays null in ``extra``."""
    envelope: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("entity_id", str),
        ("event_time", str | _Int64),
        ("sequence", _Int64),
        ("source", str | None, None),
        ("trace_id", str | None, None),
        ("specversion", None, None),  # a CloudEvent: the per-record path
        ("id", str | None, None),
    ]
    declared = [(f.name, f"d{i}", f.numeric) for i, f in enumerate(fields)]
    if by_value:
        numeric = {name: num for name, _, num in declared}
        if "value" not in numeric:
            return None
        envelope += [("value", float if numeric["value"] else Any), ("payload", None, None)]
        declared, keys = [], ()
    else:
        specs: list[tuple[str, Any, Any]] = [
            (attr, float, math.nan) if num else (attr, Any, None) for _, attr, num in declared
        ]
        specs += [(f"u{i}", Any, msgspec.UNSET) for i in range(len(keys))]
        rename = {attr: name for name, attr, _ in declared} | {f"u{i}": k for i, k in enumerate(keys)}
        try:  # (a key with a quote, a backslash or a control character cannot be a field)
            payload = msgspec.defstruct(
                "_FastPayload", specs, rename=rename, forbid_unknown_fields=True, gc=False
            )
        except (ValueError, TypeError):
            return None
        # (a top-level value beside a payload is ignored, but decoded: skipping it would not
        # reject 1e999 or a string of invalid UTF-8 there, as the per-record decode does)
        envelope += [("payload", payload), ("value", Any, None)]
    line = msgspec.defstruct("_FastLine", envelope, kw_only=True, gc=False)
    return _FastPlan(
        decode=msgspec.json.Decoder(line).decode,
        by_value=by_value,
        declared=tuple((name, num) for name, _, num in declared),
        undeclared=keys,
        read=_slot_reader([attr for _, attr, _ in declared] + [f"u{i}" for i in range(len(keys))]),
    )


def _slot_reader(attrs: list[str]) -> Callable[[list[Any]], tuple[list[Any], ...]]:
    """``lambda ps: ([p.d0 for p in ps], ...)``: a comprehension reads a struct's field twice
    as fast as ``map(attrgetter(...), ps)``. Compiled from our own field names (d0, u0...)."""
    if not all(attr.isidentifier() for attr in attrs):
        msg = f"not field names: {attrs}"
        raise ValueError(msg)
    reader: Callable[[list[Any]], tuple[list[Any], ...]] = eval(  # noqa: S307
        "lambda ps: (" + "".join(f"[p.{attr} for p in ps], " for attr in attrs) + ")"
    )
    return reader


class _PayloadKeys(msgspec.Struct, gc=False):
    payload: dict[str, msgspec.Raw] | None = None


_payload_keys = msgspec.json.Decoder(_PayloadKeys).decode
_NOT_A_FIELD_NAME = re.compile(r'["\\\x00-\x1f]')  # (msgspec refuses it as a renamed field)


def _fast_decode(
    lines: list[bytes], fields: tuple[FieldSpec, ...], by_value: bool
) -> tuple[_FastPlan, list[Any]] | None:
    """Every line decoded by the plan of that shape; an undeclared payload key the plan has
    not seen fails the decode, which then learns every key of the chunk and tries again."""
    keys = _learned.get(fields, ())
    for _ in range(_FAST_TRIES):
        plan = _fast_plan(fields, keys, by_value)
        if plan is None:
            return None
        try:
            return plan, list(map(plan.decode, lines))
        except msgspec.ValidationError as exc:
            head, tail = _UNKNOWN_KEY
            text = str(exc)
            if by_value or not (text.startswith(head) and text.endswith(tail)):
                return None
            new = {text[len(head) : -len(tail)]}
            with contextlib.suppress(msgspec.MsgspecError):  # (then the one key it named)
                new.update(*(p.payload or () for p in map(_payload_keys, lines)))
            new -= {f.name for f in fields}
            new = {key for key in new if not _NOT_A_FIELD_NAME.search(key)} - set(keys)
            if not new or len(keys) + len(new) > _FAST_KEYS:
                return None
            keys = tuple(sorted({*keys, *new}))  # (a struct's fields in key order: canonical)
            _remember(fields, keys)
        except msgspec.DecodeError:
            return None
    return None


def _remember(fields: tuple[FieldSpec, ...], keys: tuple[str, ...]) -> None:
    if len(_learned) >= 64 and fields not in _learned:
        _learned.clear()
    _learned[fields] = keys


def _fast_json_lines(lines: list[bytes], first_line: int, limits: DecodeLimits) -> pl.DataFrame | None:
    """The batch frame of ``lines`` if every line is a valid plain signal, else None."""
    if not lines or max(map(len, lines)) > limits.max_record_bytes:
        return None
    batch = _FastBatch(limits.fields)
    for start in range(0, len(lines), _CHUNK):
        if not batch.add(lines[start : start + _CHUNK], first_line + start):
            return None
    frame = batch.frame(limits)
    if frame is not None:  # (a key no longer sent stops costing a column)
        _remember(limits.fields, tuple(sorted(batch.keys)))
    return frame


class _FastBatch:
    """The chunks of one batch, as polars columns: the envelope, one per declared field and,
    per undeclared key, ``s:{i}`` (its string values) or ``j:{i}`` (any values, as canonical
    JSON), null where the key is absent. (A field's name cannot have a colon.)"""

    def __init__(self, fields: tuple[FieldSpec, ...]) -> None:
        self.fields = fields
        self.by_value = False  # the shape of the last chunk: tried first on the next
        self.keys: dict[str, int] = {}  # undeclared key (present in some chunk) → i
        self.escaped: set[int] = set()  # keys with a string that JSON writes with escapes
        self.chunks: list[pl.DataFrame] = []

    def add(self, lines: list[bytes], first: int) -> bool:
        decoded = self._decode(lines)
        if decoded is None:  # blank lines (skipped, as on the per-record path) or a bad line
            kept = [i for i, line in enumerate(lines) if line.strip()]
            if len(kept) == len(lines):
                return False
            if not kept:
                return True
            lines = [lines[i] for i in kept]
            row = pl.Series("row", [first + i for i in kept], dtype=pl.Int64)
            decoded = self._decode(lines)
            if decoded is None:
                return False
        else:
            row = pl.int_range(first, first + len(lines), dtype=pl.Int64, eager=True).alias("row")
        plan, objs = decoded
        times = _fast_times([o.event_time for o in objs])  # (a comprehension reads a slot fastest)
        if times is None:
            return False
        values = self._by_value(objs) if plan.by_value else self._by_payload(plan, objs)
        if values is None:
            return False
        entity = pl.Series("entity_id", [o.entity_id for o in objs], dtype=pl.String)
        sequence = pl.Series("sequence", [o.sequence for o in objs], dtype=pl.Int64)
        self.chunks.append(pl.DataFrame([entity, times, sequence, *values, row]))
        return True

    def _decode(self, lines: list[bytes]) -> tuple[_FastPlan, list[Any]] | None:
        for by_value in (self.by_value, not self.by_value):
            decoded = _fast_decode(lines, self.fields, by_value)
            if decoded is not None:
                self.by_value = by_value
                return decoded
        return None

    def _by_value(self, objs: list[Any]) -> list[pl.Series] | None:
        values = [o.value for o in objs]
        columns = []
        for f in self.fields:
            if f.name != "value":
                dtype = pl.Float64 if f.numeric else pl.String
                columns.append(pl.Series(f.name, [None] * len(values), dtype=dtype))
            elif f.numeric:  # (a float: the decode saw to it)
                columns.append(pl.Series(f.name, values, dtype=pl.Float64))
            elif None in values:
                return None
            else:
                columns.append(_text_series(f.name, values))
        return columns

    def _by_payload(self, plan: _FastPlan, objs: list[Any]) -> list[pl.Series]:
        columns = plan.read([o.payload for o in objs])
        series = []
        for (name, numeric), values in zip(plan.declared, columns[: len(plan.declared)], strict=True):
            if numeric:  # (NaN: absent)
                series.append(pl.Series(name, values, dtype=pl.Float64))
            else:
                series.append(_text_series(name, values))
        for key, values in zip(plan.undeclared, columns[len(plan.declared) :], strict=True):
            column = self._undeclared(key, values)
            if column is not None:
                series.append(column)
        return series

    def _undeclared(self, key: str, values: list[Any]) -> pl.Series | None:
        """The key's column: ``s:{i}`` when all its values are strings, else ``j:{i}``."""
        unset = msgspec.UNSET
        i = self.keys.get(key, len(self.keys))
        if type(values[0]) is not str and values.count(unset) == len(values):
            return None  # (not in this chunk)
        self.keys[key] = i
        try:  # (the usual case: a string in every row)
            strings = pl.Series(f"s:{i}", values, dtype=pl.String, strict=True)
            if not strings.null_count():
                if _JSON_ESCAPED.search("".join(values)):
                    self.escaped.add(i)
                return strings
        except (TypeError, ValueError):  # (absent somewhere, or not all strings)
            if None not in values:  # (a JSON null is a value, not an absent key)
                present = [None if v is unset else v for v in values]
                try:
                    strings = pl.Series(f"s:{i}", present, dtype=pl.String, strict=True)
                except (TypeError, ValueError):
                    pass
                else:
                    if _JSON_ESCAPED.search("".join(filter(None, present))):
                        self.escaped.add(i)
                    return strings
        texts = [None if v is unset else _sorted_json.encode(v).decode() for v in values]
        return pl.Series(f"j:{i}", texts, dtype=pl.String)

    def frame(self, limits: DecodeLimits) -> pl.DataFrame | None:
        """The batch frame, if every event passes the per-record path's checks."""
        if not self.chunks:
            return None
        df = self.chunks[0] if len(self.chunks) == 1 else pl.concat(self.chunks, how="diagonal")
        df = df.with_columns(pl.col(f.name).fill_nan(None) for f in self.fields if f.numeric)
        size = pl.col("entity_id").str.len_bytes()
        shortest, longest, latest, none = df.select(
            size.min().alias("shortest"),
            size.max().alias("longest"),
            pl.col("event_time").max(),
            pl.all_horizontal([pl.col(f.name).is_null() for f in self.fields]).any().alias("none"),
        ).row(0)
        if shortest < 1 or latest > limits.now_ms + limits.max_future_ms or none:
            return None
        if longest > MAX_ENTITY_CHARS:  # (bytes: at least as many as characters)
            chars = df.select(pl.col("entity_id").str.len_chars().max()).item()
            if chars > MAX_ENTITY_CHARS:
                return None
        return df.select(
            "entity_id",
            "event_time",
            "sequence",
            *(f.name for f in self.fields),
            self._extra(df).alias("extra"),
            pl.lit(None, dtype=pl.String).alias("ce_key"),
            "row",
        ).rechunk()  # (one chunk, as the engine reads fastest: it pays more than this costs)

    def _extra(self, df: pl.DataFrame) -> pl.Expr:
        """The canonical JSON of the undeclared keys (in key order, absent ones left out), or ""."""
        keys = [(canonical_json(key).decode(), i) for key, i in sorted(self.keys.items())]
        names = set(df.columns)
        if all(
            f"s:{i}" in names
            and f"j:{i}" not in names
            and i not in self.escaped
            and not df[f"s:{i}"].null_count()
            for _, i in keys
        ):  # (the usual case, one concatenation: every key a string in every row, no escapes)
            parts: list[pl.Expr] = []
            for n, (key, i) in enumerate(keys):
                parts += [pl.lit(("{" if n == 0 else '",') + key + ':"'), pl.col(f"s:{i}")]
            return pl.concat_str([*parts, pl.lit('"}')]) if parts else pl.lit("", dtype=pl.String)
        fragments: list[pl.Expr] = []
        for key, i in keys:
            value: list[pl.Expr] = []
            if f"s:{i}" in names:
                text = pl.col(f"s:{i}")
                if i in self.escaped:  # (polars escapes a string as msgspec does: tested)
                    encoded = pl.struct(text.alias("x")).struct.json_encode().str.slice(5).str.head(-1)
                    value.append(pl.when(text.is_not_null()).then(encoded))
                else:
                    value.append(pl.concat_str([pl.lit('"'), text, pl.lit('"')]))
            if f"j:{i}" in names:
                value.append(pl.col(f"j:{i}"))
            either = value[0] if len(value) == 1 else pl.coalesce(value)
            fragments.append(pl.concat_str([pl.lit(key + ":"), either]))  # (null when absent)
        inner = pl.concat_str(fragments, separator=",", ignore_nulls=True)
        braced = pl.concat_str([pl.lit("{"), inner, pl.lit("}")])
        return pl.when(inner == "").then(pl.lit("")).otherwise(braced)


def _fast_times(times: list[Any]) -> pl.Series | None:
    try:
        return pl.Series("event_time", times, dtype=pl.Int64, strict=True)
    except (TypeError, ValueError):  # RFC 3339 strings among them
        pass
    try:
        return pl.Series("event_time", [parse_event_time(t) for t in times], dtype=pl.Int64)
    except _Rejected:
        return None


def _text_series(name: str, values: list[Any]) -> pl.Series:
    """An "any" field: a string as it is, another value as canonical JSON, null as absent."""
    try:
        return pl.Series(name, values, dtype=pl.String, strict=True)
    except (TypeError, ValueError):
        return pl.Series(
            name,
            [v if v is None or type(v) is str else canonical_json(v).decode() for v in values],
            dtype=pl.String,
        )


class _BatchedEvent(_Envelope, kw_only=True):
    """A CloudEvent of a batch message with its ``data`` decoded in the same pass."""

    data: _Envelope | None = None  # type: ignore[assignment]


_batch_events = msgspec.json.Decoder(list[_BatchedEvent])
_batch_raws = msgspec.json.Decoder(list[msgspec.Raw])


def decode_cloudevent_batch(body: bytes, limits: DecodeLimits) -> list[Record] | None:
    """Every event of a batch message (CloudEvents JSON batch format) in one typed decode: about
    4x cheaper per event than one decode per event and per ``data``. Each event then passes the
    same checks as on the per-event path (:func:`_signal`); if any event is bad it returns None
    and the caller takes the per-event path, which names the bad events (the common case is
    fast, the rare one exact)."""
    events = _typed_batch(body, limits)
    if events is None:
        return None
    declared = _declared(limits.fields)
    out: list[Record] = []
    try:
        for event in events:
            if event.specversion is None or event.id is None or event.source is None or event.data is None:
                return None
            out.append(_signal(event.data, "$.data", f"{event.source}\x00{event.id}", limits, declared))
    except _Rejected:
        return None
    return out


def _typed_batch(body: bytes, limits: DecodeLimits) -> list[_BatchedEvent] | None:
    try:
        if len(body) > limits.max_record_bytes and any(
            len(raw) > limits.max_record_bytes for raw in _batch_raws.decode(body)
        ):
            return None
        return _batch_events.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


_CSV_TEXT = ("entity_id", "source", "trace_id")
_CSV_INTEGERS = ("event_time", "sequence")


def decode_csv_lines(
    header: Sequence[str], lines: Sequence[str], first_line: int, limits: DecodeLimits
) -> tuple[pl.DataFrame, list[InvalidRecord]]:
    """CSV with a header: entity_id, event_time (RFC 3339 or digits), sequence[, source, trace_id],
    and the payload fields, one column each (an empty cell is an absent field)."""
    declared = _declared(limits.fields)
    records, rows, errors = [], [], []
    for number, cells in enumerate(csv.reader(lines), start=first_line):
        if not cells:
            continue
        try:
            records.append(_csv_record(header, cells, limits, declared))
            rows.append(number)
        except _Rejected as exc:
            errors.append(InvalidRecord(row=number, field=exc.field, reason=exc.reason))
    return records_frame(records, rows, limits.fields), errors


def _csv_record(header: Sequence[str], cells: list[str], limits: DecodeLimits, declared: _Fields) -> Record:
    """The row as the JSON signal it stands for, then the JSON checks; a path names the column."""
    if len(cells) != len(header):
        raise _Rejected(field="$", reason=f"expected {len(header)} columns, got {len(cells)}")
    obj: dict[str, Any] = {}
    payload: dict[str, Any] = {}
    for name, text in zip(header, cells, strict=True):
        if name in _CSV_TEXT and name not in declared.names:
            obj[name] = text
        elif name in _CSV_INTEGERS:
            if text != "":
                number = _csv_number(text, f"$.{name}", integer=True)
                obj[name] = text if name == "event_time" and number is None else number
        elif text == "":
            continue
        elif name in declared.numeric:
            payload[name] = _csv_number(text, f"$.{name}", integer=False)
        else:
            payload[name] = text
    obj["payload"] = payload
    try:
        return _record(msgspec.json.encode(obj), limits, declared)
    except _Rejected as exc:  # a CSV row is flat: $.payload.temp is the column $.temp
        if exc.field.startswith("$.payload"):
            raise _Rejected(field="$" + exc.field.removeprefix("$.payload"), reason=exc.reason) from None
        raise


def _csv_number(text: str, path: str, *, integer: bool) -> float | int | None:
    """Digits are integers, decimals are floats; anything else is text (an error unless a timestamp)."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    if integer:
        if path == "$.event_time":
            return None
        raise _Rejected(field=path, reason=f"expected an integer, got {text[:32]!r}")
    try:
        return _check_number(float(stripped), path)
    except ValueError:
        raise _Rejected(field=path, reason=f"expected a number, got {text[:32]!r}") from None


_REQUIRED = ("entity_id", "event_time", "sequence")
_NOT_PAYLOAD = (*_REQUIRED, "source", "trace_id")  # envelope columns: neither fields nor extra


def _time_expr(dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """(epoch ms, mask of rows with sub-millisecond digits) for an integer or timestamp column."""
    col = pl.col("event_time")
    if isinstance(dtype, pl.Datetime):
        per_ms = {"ms": 1, "us": 1000, "ns": 1_000_000}[dtype.time_unit or "us"]
        raw = col.dt.epoch(dtype.time_unit or "us")
        return (raw // per_ms).cast(pl.Int64), (raw % per_ms) != 0
    return col.cast(pl.Int64), None


def _is_text_scalar(dtype: pl.DataType) -> bool:
    """A column type an "any" field can take: a scalar with a text form."""
    return (
        dtype in (pl.String, pl.Categorical, pl.Boolean, pl.Null)
        or isinstance(dtype, pl.Enum)
        or dtype.is_numeric()
        or dtype.is_temporal()
    )


def _type_problem(df: pl.DataFrame, fields: tuple[FieldSpec, ...]) -> tuple[str, str] | None:
    schema = df.schema
    for name in _REQUIRED:
        if name not in schema:
            return f"$.{name}", "missing column"
    present = [f for f in fields if f.name in schema]
    if not present:  # every row would be rejected, one by one: say it once
        names = [f.name for f in fields]
        return (
            (f"$.{names[0]}", "missing column") if len(names) == 1 else ("$", f"none of the columns {names}")
        )
    checks = {
        "entity_id": schema["entity_id"] in (pl.String, pl.Categorical),
        "event_time": schema["event_time"].is_integer()
        or isinstance(schema["event_time"], pl.Datetime)
        or schema["event_time"] == pl.String,
        "sequence": schema["sequence"].is_integer(),
    }
    for f in present:
        dtype = schema[f.name]
        checks[f.name] = (dtype.is_numeric() or dtype == pl.Null) if f.numeric else _is_text_scalar(dtype)
    for name, ok in checks.items():
        if not ok:
            return f"$.{name}", f"column has type {schema[name]}"
    return None


def _field_expr(name: str, numeric: bool, schema: pl.Schema) -> pl.Expr:
    """A declared field's column as the batch frame holds it (null where the file has none)."""
    if name not in schema:
        return pl.lit(None, dtype=pl.Float64 if numeric else pl.String)
    col = pl.col(name)
    if numeric:
        return col.cast(pl.Float64)
    dtype = schema[name]
    if dtype == pl.String:
        return col
    if dtype.is_float():  # as JSON would write it (1e20, not 1e+20); NaN/Inf are JSON null: absent
        return pl.when(col.is_finite()).then(col.cast(pl.String).str.replace("e+", "e", literal=True))
    return col.cast(pl.String)


_EXPONENT_FLOAT = 1e16
"""From this magnitude polars writes a float as ``1e+16``, msgspec (canonical JSON) as ``1e16``."""


def _extra_column(df: pl.DataFrame, names: list[str]) -> pl.Series:
    """The undeclared columns as one JSON object per row, as :func:`canonical_json` writes it
    (sorted keys, compact; bytes in base64, timestamps in RFC 3339), so that equal events have
    equal ``extra`` whichever the input format. Column-wise: one polars JSON encoding, unless a
    float column holds a value of 1e16 or more or bytes sit inside a list or a struct (rare),
    then one text fragment per column. (Floats of 1e16 or more nested in a list or a struct
    keep polars' ``e+``.)"""
    names = sorted(names)
    ready = [_jsonable(df.schema[name], pl.col(name)).alias(name) for name in names]
    floats = [pl.col(n).filter(pl.col(n).is_finite()).abs().max() for n in names if df.schema[n].is_float()]
    largest = df.select(pl.max_horizontal(floats)).item() if floats else None
    nested_bytes = any(_has_binary(df.schema[n]) and df.schema[n] != pl.Binary for n in names)
    if not nested_bytes and (largest is None or largest < _EXPONENT_FLOAT):
        return df.select(pl.struct(ready).struct.json_encode().alias("extra")).to_series()
    parts: list[pl.Expr] = []
    for i, (name, expr) in enumerate(zip(names, ready, strict=True)):
        parts.append(pl.lit(("{" if i == 0 else ",") + canonical_json(name).decode() + ":"))
        parts.append(_json_fragment(df, name, expr))
    return df.select(pl.concat_str([*parts, pl.lit("}")]).alias("extra")).to_series()


def _jsonable(dtype: pl.DataType, col: pl.Expr) -> pl.Expr:
    """A column in the form whose polars JSON is msgspec's JSON of the same Python values."""
    if dtype == pl.Float32:  # (its Python value is the float64 of the float32)
        return col.cast(pl.Float64)
    if dtype == pl.Binary:
        return col.bin.encode("base64")
    if isinstance(dtype, pl.Datetime):  # 2020-01-01T00:00:00[.ffffff](Z|+hh:mm|naive)
        seconds = col.dt.strftime("%Y-%m-%dT%H:%M:%S")
        fraction = pl.when(col.dt.microsecond() != 0).then(col.dt.strftime("%.6f")).otherwise(pl.lit(""))
        zone = pl.lit("") if dtype.time_zone is None else col.dt.strftime("%:z").replace("+00:00", "Z")
        return pl.concat_str([seconds, fraction, zone])
    return col


def _json_fragment(df: pl.DataFrame, name: str, ready: pl.Expr) -> pl.Expr:
    """One column's JSON text: the exact (slower) path of :func:`_extra_column`."""
    dtype = df.schema[name]
    if _has_binary(dtype) and dtype != pl.Binary:  # polars cannot write nested bytes: Python
        return pl.lit(pl.Series([canonical_json(v).decode() for v in df[name].to_list()], dtype=pl.String))
    if dtype.is_float():
        text = ready.cast(pl.String).str.replace("e+", "e", literal=True)
        return pl.when(ready.is_finite()).then(text).otherwise(pl.lit("null"))
    return pl.struct(ready.alias("x")).struct.json_encode().str.strip_prefix('{"x":').str.strip_suffix("}")


def _has_binary(dtype: pl.DataType | DataTypeClass) -> bool:
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _has_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_has_binary(f.dtype) for f in dtype.fields)
    return False


def decode_arrow(
    table: pa.Table | pa.RecordBatch, first_row: int, limits: DecodeLimits
) -> tuple[pl.DataFrame, list[InvalidRecord]]:
    """Columnar validation of a Parquet/Arrow batch: columns entity_id, event_time, sequence and
    one per declared field; other columns are carried in ``extra``."""
    fields = limits.fields
    df = pl.DataFrame(pl.from_arrow(table))
    problem = _type_problem(df, fields)
    if problem is not None:
        reason = f"{problem[1]}: rows {first_row}..{first_row + df.height - 1} rejected"
        return records_frame([], [], fields), [InvalidRecord(row=first_row, field=problem[0], reason=reason)]
    declared = _declared(fields)
    envelope = [c for c in _NOT_PAYLOAD if c not in declared.names]
    undeclared = [c for c in df.columns if c not in declared.names and c not in envelope]
    if undeclared:  # (before "row" is added: a file may have a column of that name)
        df = df.with_columns(_extra_column(df, undeclared))
    if df.schema["event_time"] == pl.String:
        df = df.with_columns(pl.col("event_time").map_elements(_time_or_none, return_dtype=pl.Int64))
    epoch, sub_ms = _time_expr(df.schema["event_time"])
    df = df.with_columns(pl.int_range(first_row, first_row + df.height, dtype=pl.Int64).alias("row"))
    values = [_field_expr(f.name, f.numeric, df.schema).alias(f.name) for f in fields]
    checks = _arrow_checks(epoch, sub_ms, limits, values, declared)
    flags = df.select("row", *[c[0].fill_null(value=False).alias(f"_c{i}") for i, c in enumerate(checks)])
    invalid = flags.select(pl.any_horizontal([pl.col(f"_c{i}") for i in range(len(checks))])).to_series()
    clean = not invalid.any()  # the usual case: no filter, no per-check scan
    out = (df if clean else df.filter(~invalid)).select(
        pl.col("entity_id").cast(pl.String),
        epoch.alias("event_time"),
        pl.col("sequence").cast(pl.Int64),
        *values,
        pl.col("extra") if undeclared else pl.lit("").alias("extra"),
        pl.lit(None, dtype=pl.String).alias("ce_key"),
        "row",
    )
    return out, [] if clean else _first_problem_per_row(flags, checks)


def _arrow_checks(
    epoch: pl.Expr, sub_ms: pl.Expr | None, limits: DecodeLimits, values: list[pl.Expr], declared: _Fields
) -> list[tuple[pl.Expr, str, str]]:
    """(mask of bad rows, field path, reason), in the order a record's problem is reported."""
    entity = pl.col("entity_id").cast(pl.String)
    checks: list[tuple[pl.Expr, str, str]] = [
        (entity.is_null() | (entity.str.len_chars() == 0), "$.entity_id", "missing or empty"),
        (
            entity.str.len_chars() > MAX_ENTITY_CHARS,
            "$.entity_id",
            f"longer than {MAX_ENTITY_CHARS} characters",
        ),
        (pl.col("event_time").is_null(), "$.event_time", "missing or not an RFC 3339 timestamp with a zone"),
        (epoch > limits.now_ms + limits.max_future_ms, "$.event_time", "too far in the future"),
        (pl.col("sequence").is_null(), "$.sequence", "missing"),
    ]
    if len(values) == 1:
        checks.append((values[0].is_null(), "$" + declared.missing_path, "missing"))
    else:
        checks.append((pl.all_horizontal([v.is_null() for v in values]), "$", declared.missing_reason))
    for (name, numeric), value in zip(declared.pairs, values, strict=True):
        if numeric:
            checks.append((~value.is_finite(), f"$.{name}", "not a finite number"))
    if sub_ms is not None:
        checks.append((sub_ms, "$.event_time", "sub-millisecond precision would be truncated"))
    return checks


def _first_problem_per_row(
    flags: pl.DataFrame, checks: list[tuple[pl.Expr, str, str]]
) -> list[InvalidRecord]:
    """One record per bad row (its first failing check), so counts are of records, not problems."""
    found: dict[int, InvalidRecord] = {}
    for i, (_, field, reason) in enumerate(checks):
        for row in flags.filter(pl.col(f"_c{i}"))["row"]:
            found.setdefault(int(row), InvalidRecord(row=int(row), field=field, reason=reason))
    return [found[row] for row in sorted(found)]


def _time_or_none(text: str) -> int | None:
    try:
        return parse_event_time(text)
    except _Rejected:
        return None
