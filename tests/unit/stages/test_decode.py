"""Strict decoding: every bad record names its row, field path and reason; nothing is coerced."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pyarrow as pa
import pytest

from headwater.cloudevents import encode_batch, split_batch
from headwater.featuresets import DEFAULT_FEATURES, FieldSpec
from headwater.models import canonical_json
from headwater.pipeline.signal_publish import _csv_object
from headwater.stages.decode import (
    DecodeLimits,
    decode_arrow,
    decode_cloudevent_batch,
    decode_csv_lines,
    decode_json_lines,
    decode_records,
    records_frame,
)
from headwater.stages.features import batch_schema

NOW = 1_700_000_000_000
LIMITS = DecodeLimits(now_ms=NOW, max_future_ms=3_600_000, max_record_bytes=300)
GOOD = {"entity_id": "a", "event_time": "2023-11-14T22:13:20.123Z", "sequence": 1, "value": 2.5}


def line(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


BAD_LINES = [
    (b'{"entity_id": "a", ', "$", "malformed JSON"),
    (b"NaN", "$", "malformed JSON"),
    (line(entity_id=...), "$.entity_id", "missing"),
    (line(sequence="1"), "$.sequence", "Expected `int"),
    (line(sequence=True), "$.sequence", "got `bool`"),
    (line(value="2.5"), "$.value", 'expected a finite number, got "2.5"'),
    (line(value=True), "$.value", "expected a finite number, got true"),
    (line(value=..., payload={"value": "48.2", "unit": "u"}), "$.payload.value", 'got "48.2"'),
    (line(value=..., payload={"value": None}), "$.payload.value", "got null"),
    (line(value=..., payload={"value": {"v": 1}}), "$.payload.value", 'got {"v":1}'),
    (b'{"entity_id":"a","event_time":1,"sequence":1,"value":1e999}', "$.value", "out of range"),
    (line(event_time=1.7e12), "$.event_time", "got `float`"),
    (line(event_time="2023-11-14 22:13:20"), "$.event_time", "zone"),
    (line(event_time="2023-11-14T22:13:20.123456Z"), "$.event_time", "sub-millisecond"),
    (line(event_time="yesterday"), "$.event_time", "RFC 3339"),
    (line(event_time=NOW + 7_200_000), "$.event_time", "future"),
    (line(value=..., payload={"temp": 1.0}), "$.payload.value", "missing"),
    (line(entity_id="x" * 400), "$", "exceeds"),
    (line(entity_id=""), "$.entity_id", "1 to 256"),
    (
        json.dumps({"specversion": "1.0", "id": "1", "source": "s", "data": {"entity_id": "a"}}).encode(),
        "$.data.event_time",
        "missing",
    ),
]


@pytest.mark.parametrize(("raw", "field", "reason"), BAD_LINES)
def test_bad_json_lines_are_reported(raw: bytes, field: str, reason: str) -> None:
    frame, errors = decode_json_lines([line(), raw, line(sequence=3)], 10, LIMITS)
    assert frame["row"].to_list() == [10, 12]
    assert len(errors) == 1
    assert errors[0].row == 11
    assert errors[0].field == field
    assert reason in errors[0].reason


def cloud(data: bytes, n: int = 1, **outer: object) -> bytes:
    head = json.dumps({"specversion": "1.0", "id": str(n), "source": "gw", "type": "t", **outer})
    return head[:-1].encode() + b', "data": ' + data + b"}"


BAD_DATA = [raw for raw, _, _ in BAD_LINES[2:]]  # the JSON objects among them


@pytest.mark.parametrize(
    "bad",
    [
        *(cloud(raw, 2) for raw in BAD_DATA),
        cloud(b"null", 2),
        line(),  # a plain signal inside a batch: not a CloudEvent
    ],
)
def test_the_fast_batch_path_accepts_exactly_what_the_per_event_path_accepts(bad: bytes) -> None:
    """One typed decode of a whole batch message must never accept an event the per-event
    decoder rejects: with one bad event it declines (None) and the exact path names it."""
    good = [cloud(line(sequence=n), n) for n in (1, 3)]
    everything_good = encode_batch(good)
    fast = decode_cloudevent_batch(everything_good, LIMITS)
    assert fast is not None and fast == decode_records(split_batch(everything_good), 0, LIMITS)[0]
    mixed = encode_batch([good[0], bad, good[1]])
    records, rows, errors = decode_records(split_batch(mixed), 0, LIMITS)
    if errors:  # (a plain signal is valid input, just not a CloudEvent: the exact path takes it)
        assert decode_cloudevent_batch(mixed, LIMITS) is None
        assert [e.row for e in errors] == [1] and rows == [0, 2]
    else:
        assert decode_cloudevent_batch(mixed, LIMITS) is None and len(records) == 3


ANY_TYPES = {"unit": "u", "ok": True, "note": None, "where": {"lat": 1.5, "tags": ["a", 2]}, "n": 7}


def test_payload_fields_the_feature_set_does_not_use_are_carried_whatever_their_type() -> None:
    """A string (or any other type) beside the value never invalidates an event; the other
    fields are kept, canonically, in ``extra`` (part of the dedup identity)."""
    raw = line(value=..., payload={"value": 48.2, **ANY_TYPES})
    frame, errors = decode_json_lines([raw], 1, LIMITS)
    assert errors == [] and frame["value"].to_list() == [48.2]
    assert json.loads(frame["extra"][0]) == ANY_TYPES
    reordered = line(value=..., payload=dict(reversed(list({"value": 48.2, **ANY_TYPES}.items()))))
    assert decode_json_lines([reordered], 1, LIMITS)[0]["extra"].to_list() == frame["extra"].to_list()
    integer = decode_json_lines([line(value=..., payload={"value": 48, "unit": "u"})], 1, LIMITS)[0]
    assert integer["value"].to_list() == [48.0]


def test_the_fast_batch_path_carries_unused_fields_of_any_type_as_the_exact_path_does() -> None:
    events = [
        cloud(line(value=..., sequence=1, payload={"value": 1.0, **ANY_TYPES}), 1),
        cloud(line(sequence=2), 2, value="an extension attribute, not the signal's value"),
    ]
    batch = encode_batch(events)
    exact, _, errors = decode_records(split_batch(batch), 0, LIMITS)
    assert errors == [] and len(exact) == 2
    assert decode_cloudevent_batch(batch, LIMITS) == exact


def test_good_json_lines_and_cloudevents() -> None:
    ce = {"specversion": "1.0", "id": "42", "source": "gw", "type": "t", "data": {**GOOD, "sequence": 7}}
    payload = line(value=..., payload={"value": 1.0, "b": 2.0, "a": -1.5}, event_time=1_699_999_999_000)
    frame, errors = decode_json_lines([line(), json.dumps(ce).encode(), b"", payload], 1, LIMITS)
    assert errors == []
    assert frame["event_time"].to_list() == [
        1_699_999_999_123 + 1_000,
        1_699_999_999_123 + 1_000,
        1_699_999_999_000,
    ]
    assert frame["ce_key"].to_list() == [None, "gw\x0042", None]
    assert frame["extra"].to_list() == ["", "", canonical_json({"a": -1.5, "b": 2.0}).decode()]
    assert frame["row"].to_list() == [1, 2, 4]


def test_csv_is_strict() -> None:
    header = ["entity_id", "event_time", "sequence", "value"]
    lines = [
        "a,1000,1,2.5",
        "a,2023-11-14T22:13:20Z,2,3",
        "a,1000,x,1",
        "a,1000,3,nan",
        "a,1000,4",
        "b,1000,5,1e3",
    ]
    frame, errors = decode_csv_lines(header, lines, 2, LIMITS)
    assert frame["row"].to_list() == [2, 3, 7]
    assert frame["value"].to_list() == [2.5, 3.0, 1000.0]
    assert [(e.row, e.field) for e in errors] == [(4, "$.sequence"), (5, "$.value"), (6, "$")]


def test_arrow_columns_validated_without_coercion() -> None:
    table = pa.table(
        {
            "entity_id": ["a", None, "c", "d", "e", "f"],
            "event_time": pa.array([1000, 2000, None, 4000, 5000, NOW + 10**9], pa.int64()),
            "sequence": pa.array([1, 2, 3, None, 5, 6], pa.int64()),
            "value": [1.0, 2.0, 3.0, 4.0, float("inf"), 6.0],
        }
    )
    table = table.append_column("extra_col", pa.array([1] * 6))
    both_bad = pa.table(
        {
            "entity_id": pa.array([None], pa.string()),
            "event_time": [1],
            "sequence": pa.array([None], pa.int64()),
            "value": [1.0],
        }
    )
    bad_errors = decode_arrow(both_bad, 0, LIMITS)[1]
    assert [(e.row, e.field) for e in bad_errors] == [(0, "$.entity_id")]  # one per row: its first problem
    frame, errors = decode_arrow(table, 100, LIMITS)
    assert frame["row"].to_list() == [100]
    assert frame["extra"].to_list() == ['{"extra_col":1}']  # a column no field uses: carried
    assert [(e.row, e.field) for e in errors] == [
        (101, "$.entity_id"),
        (102, "$.event_time"),
        (103, "$.sequence"),
        (104, "$.value"),
        (105, "$.event_time"),
    ]


def test_arrow_timestamps_and_wrong_types() -> None:
    ts = pa.array([1_500_000, 1_000_001], pa.timestamp("us", tz="UTC"))
    table = pa.table({"entity_id": ["a", "b"], "event_time": ts, "sequence": [1, 2], "value": [1, 2]})
    frame, errors = decode_arrow(table, 0, LIMITS)
    assert frame["event_time"].to_list() == [1500]
    assert errors[0].reason.startswith("sub-millisecond")
    wrong = pa.table({"entity_id": ["a"], "event_time": [1.5], "sequence": [1], "value": [1.0]})
    frame, errors = decode_arrow(wrong, 0, LIMITS)
    assert frame.height == 0
    assert errors[0].field == "$.event_time"
    assert "double" in errors[0].reason.lower() or "float" in errors[0].reason.lower()
    no_value = pa.table({"entity_id": ["a", "b"], "event_time": [1, 2], "sequence": [1, 2], "v": [1.0, 2.0]})
    frame, errors = decode_arrow(no_value, 5, LIMITS)  # one error for the batch, not one per row
    assert frame.height == 0 and [(e.row, e.field, e.reason) for e in errors] == [
        (5, "$.value", "missing column: rows 5..6 rejected")
    ]


TEMP = FieldSpec(name="temp", aggregations=("mean", "max"))
HUMIDITY = FieldSpec(name="humidity", aggregations=("count", "mean"))
STATUS = FieldSpec(name="status", aggregations=("count", "last", "count_distinct"))
FIELDS = (TEMP, HUMIDITY, STATUS)
MULTI = DecodeLimits(now_ms=NOW, max_future_ms=3_600_000, max_record_bytes=300, fields=FIELDS)
SENSOR = {"temp": 21.5, "humidity": 40.2, "unit": "C", "status": "ok", "nested": {"a": [1, True]}}


def sensor(**payload: object) -> bytes:
    merged = {**SENSOR, **payload}
    return line(value=..., payload={k: v for k, v in merged.items() if v is not ...})


def test_a_multi_field_payload_becomes_one_typed_column_per_declared_field() -> None:
    frame, errors = decode_json_lines([sensor()], 1, MULTI)
    assert errors == []
    assert frame.schema == batch_schema(FIELDS)  # the engine's columns, in its order
    assert list(frame.columns) == list(batch_schema(FIELDS))
    assert frame.row(0, named=True) == {
        "entity_id": "a",
        "event_time": 1_699_999_999_123 + 1_000,
        "sequence": 1,
        "temp": 21.5,
        "humidity": 40.2,
        "status": "ok",
        "extra": canonical_json({"unit": "C", "nested": {"a": [1, True]}}).decode(),
        "ce_key": None,
        "row": 1,
    }


@pytest.mark.parametrize(
    ("payload", "column", "expected"),
    [
        ({"humidity": ...}, "humidity", None),  # absent: null, the event still counts for the others
        ({"temp": 21}, "temp", 21.0),  # an integer is widened
        ({"status": True}, "status", "true"),  # an "any" field that is not a string: canonical JSON
        ({"status": 5}, "status", "5"),
        ({"status": 1.5}, "status", "1.5"),
        ({"status": {"b": 1, "a": [None]}}, "status", '{"a":[null],"b":1}'),
        ({"status": "true"}, "status", "true"),  # (a string stays as it is)
        ({"status": None}, "status", None),  # JSON null: absent
        ({"temp": ..., "humidity": ..., "status": "x"}, "status", "x"),  # one field is enough
    ],
)
def test_declared_fields_absent_or_of_any_type(
    payload: dict[str, object], column: str, expected: object
) -> None:
    frame, errors = decode_json_lines([sensor(**payload)], 1, MULTI)
    assert errors == []
    assert frame[column].to_list() == [expected]


NONE_PRESENT = "none of the feature set's fields is present (temp, humidity, status)"


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (sensor(temp="hot"), "$.payload.temp", 'expected a finite number, got "hot"'),
        (sensor(humidity=True), "$.payload.humidity", "got true"),
        (sensor(temp=None), "$.payload.temp", "expected a finite number, got null"),  # even with the others
        (sensor(temp=[1.0]), "$.payload.temp", "got [1.0]"),
        (sensor(temp=..., humidity=..., status=...), "$.payload", NONE_PRESENT),
        (sensor(temp=..., humidity=..., status=None), "$.payload", NONE_PRESENT),  # null is absent
        (line(value=..., payload={}), "$.payload", NONE_PRESENT),
        (line(), "$.payload", NONE_PRESENT),  # {"value": 2.5}: "value" is not declared
        (
            json.dumps(
                {"specversion": "1.0", "id": "1", "source": "s", "data": json.loads(sensor(temp="hot"))}
            ).encode(),
            "$.data.payload.temp",
            '"hot"',
        ),
    ],
)
def test_multi_field_rejections_name_the_field(raw: bytes, field: str, reason: str) -> None:
    frame, errors = decode_json_lines([sensor(), raw], 1, MULTI)
    assert frame["row"].to_list() == [1]
    assert [(e.row, e.field) for e in errors] == [(2, field)]
    assert reason in errors[0].reason


def test_the_top_level_value_is_the_payload_value() -> None:
    """``{"value": v}`` without a payload is ``{"payload": {"value": v}}``, whatever the field's kind."""
    as_text = DecodeLimits(now_ms=NOW, fields=(FieldSpec(name="value", aggregations=("last",)),))
    frame, errors = decode_json_lines(
        [line(value=True), line(value=..., payload={"value": True})], 1, as_text
    )
    assert errors == [] and frame["value"].to_list() == ["true", "true"]
    with_value = DecodeLimits(now_ms=NOW, fields=(TEMP, FieldSpec(name="value", aggregations=("sum",))))
    frame, errors = decode_json_lines([line(value=3)], 1, with_value)
    assert errors == [] and frame.select("temp", "value").row(0) == (None, 3.0)
    _, errors = decode_json_lines([line(value="x")], 1, with_value)
    assert [(e.field, e.reason) for e in errors] == [("$.value", 'expected a finite number, got "x"')]
    _, errors = decode_json_lines([line(value=2.5)], 1, DecodeLimits(now_ms=NOW, fields=(TEMP,)))
    assert [(e.field, e.reason) for e in errors] == [("$.payload.temp", "missing required field")]


def test_the_fast_batch_path_agrees_with_the_exact_path_on_multi_field_events() -> None:
    good = [cloud(sensor(sequence=1), 1), cloud(sensor(sequence=2, humidity=..., status=[1, "a"]), 2)]
    batch = encode_batch(good)
    exact, _, errors = decode_records(split_batch(batch), 0, MULTI)
    assert errors == [] and [r[3:6] for r in exact] == [(21.5, 40.2, "ok"), (21.5, None, '[1,"a"]')]
    assert decode_cloudevent_batch(batch, MULTI) == exact
    for bad in (sensor(temp="hot"), sensor(temp=..., humidity=..., status=...)):
        assert decode_cloudevent_batch(encode_batch([good[0], cloud(bad, 3)]), MULTI) is None


def test_records_frame_has_the_engine_layout_even_when_empty() -> None:
    records, rows, _ = decode_records([sensor()], 7, MULTI)
    assert records == [("a", 1_700_000_000_123, 1, 21.5, 40.2, "ok", records[0][6], None)]
    assert records_frame(records, rows, FIELDS).schema == batch_schema(FIELDS)
    assert records_frame([], [], FIELDS).schema == batch_schema(FIELDS)
    assert records_frame([], [], DEFAULT_FEATURES).schema == batch_schema(DEFAULT_FEATURES)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"entity_id":"a","event_time":1,"sequence":1180591620717411303424,"value":1}', "$.sequence"),
        (b'{"entity_id":"a","event_time":-1180591620717411303424,"sequence":1,"value":1}', "$.event_time"),
        (b'{"entity_id":"a","event_time":1,"sequence":1,"value":1' + b"0" * 400 + b"}", "$.value"),
    ],
)
def test_integers_out_of_range_reject_their_record_not_the_batch(raw: bytes, field: str) -> None:
    """An int64 column cannot hold 2**70 and a float cannot hold 10**400: one such record used to
    fail the whole batch (and a stream worker with it)."""
    frame, errors = decode_json_lines([line(), raw], 1, DecodeLimits(now_ms=NOW))
    assert frame["row"].to_list() == [1]
    assert [(e.row, e.field) for e in errors] == [(2, field)]


CSV_HEADER = ["entity_id", "event_time", "sequence", "temp", "humidity", "status", "unit", "source"]


def test_csv_columns_other_than_the_envelope_are_payload_fields() -> None:
    lines = [
        "a,1000,1,21.5,40,ok,C,gw",
        "a,1000,2,21.5,,1.50, C ,gw",  # empty: absent; "any" and undeclared cells stay text
        "a,1000,3,hot,40,ok,C,gw",
        "a,1000,4,,,,C,gw",
        "a,1000,5,nan,40,ok,,gw",
        "a,1000,6,,40,,,",
    ]
    frame, errors = decode_csv_lines(CSV_HEADER, lines, 2, MULTI)
    assert frame["row"].to_list() == [2, 3, 7]
    assert frame.schema == batch_schema(FIELDS)
    assert frame["temp"].to_list() == [21.5, 21.5, None]
    assert frame["humidity"].to_list() == [40.0, None, 40.0]
    assert frame["status"].to_list() == ["ok", "1.50", None]
    assert frame["extra"].to_list() == ['{"unit":"C"}', '{"unit":" C "}', ""]  # source: envelope
    assert [(e.row, e.field) for e in errors] == [(4, "$.temp"), (5, "$"), (6, "$.temp")]
    assert "'hot'" in errors[0].reason and errors[1].reason == NONE_PRESENT


def test_a_csv_column_named_like_an_envelope_attribute_is_a_field_when_declared() -> None:
    limits = DecodeLimits(now_ms=NOW, fields=(TEMP, FieldSpec(name="source", aggregations=("last",))))
    frame, errors = decode_csv_lines(CSV_HEADER, ["a,1000,1,21.5,40,ok,C,gw"], 2, limits)
    assert errors == [] and frame["source"].to_list() == ["gw"]
    assert json.loads(frame["extra"][0]) == {"humidity": "40", "status": "ok", "unit": "C"}


def test_csv_rows_published_as_cloudevents_decode_as_csv_ingest_decodes_them() -> None:
    """``publish signals`` turns a CSV row into the JSON object ingest reads: same values, same
    rejections (the publisher knows no feature set, so numbers in text columns may differ)."""
    lines = [
        "a,1000,1,21.5,40,ok,C,gw",
        "a,1000,2,21.5,,ok,,gw",
        "a,1000,3,hot,40,ok,C,gw",
        "a,1000,4,,,,C,gw",
    ]
    ingested, errors = decode_csv_lines(CSV_HEADER, lines, 2, MULTI)
    objects = [_csv_object(CSV_HEADER, raw.encode()) for raw in lines]
    published, published_errors = decode_json_lines(objects, 2, MULTI)
    assert published.drop("extra").equals(ingested.drop("extra"))
    assert [(e.row, e.field) for e in published_errors] == [(4, "$.payload.temp"), (5, "$.payload")]
    assert [(e.row, e.field) for e in errors] == [(4, "$.temp"), (5, "$")]
    classic = _csv_object(["entity_id", "event_time", "sequence", "value"], b"a,1000,1,2.5")
    assert classic == b'{"entity_id":"a","event_time":1000,"sequence":1,"value":2.5}'  # event ids kept


def test_arrow_multi_field_columns() -> None:
    table = pa.table(
        {
            "entity_id": ["a", "b", "c", "d", "e"],
            "event_time": pa.array([1000, 2000, 3000, 4000, 5000], pa.int64()),
            "sequence": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "temp": [21.5, None, float("nan"), None, 1.0],
            "humidity": pa.array([40, 41, 42, None, None], pa.int32()),
            "status": [True, False, True, None, None],
            "unit": ["C", None, "C", "C", "F"],
            "n": pa.array([1, 2, 3, 4, 5], pa.int64()),
        }
    )
    frame, errors = decode_arrow(table, 10, MULTI)
    assert frame.schema == batch_schema(FIELDS)
    assert frame["row"].to_list() == [10, 11, 14]
    assert frame["temp"].to_list() == [21.5, None, 1.0]
    assert frame["humidity"].to_list() == [40.0, 41.0, None]
    assert frame["status"].to_list() == ["true", "false", None]
    assert frame["extra"].to_list() == ['{"n":1,"unit":"C"}', '{"n":2,"unit":null}', '{"n":5,"unit":"F"}']
    assert [(e.row, e.field, e.reason) for e in errors] == [
        (12, "$.temp", "not a finite number"),
        (13, "$", NONE_PRESENT),
    ]


def test_arrow_any_field_columns_of_other_types_are_their_json_text() -> None:
    table = pa.table(
        {
            "entity_id": list("abcd"),
            "event_time": [1] * 4,
            "sequence": [1, 2, 3, 4],
            "temp": [1.0] * 4,
            "status": [1e20, float("nan"), 2.5, -3.0],  # NaN: JSON null, an absent field
        }
    )
    frame, errors = decode_arrow(table, 0, MULTI)
    assert errors == [] and frame["status"].to_list() == ["1e20", None, "2.5", "-3.0"]
    assert frame["status"].to_list() == [
        None if v is None else canonical_json(v).decode() for v in [1e20, None, 2.5, -3.0]
    ]
    codes = table.set_column(4, "status", pa.array([200, None, 404, 500], pa.int16()))
    assert decode_arrow(codes, 0, MULTI)[0]["status"].to_list() == ["200", None, "404", "500"]


def test_arrow_without_other_columns_has_empty_extra_and_a_missing_field_column_is_null() -> None:
    table = pa.table({"entity_id": ["a"], "event_time": [1000], "sequence": [1], "status": ["ok"]})
    frame, errors = decode_arrow(table, 0, MULTI)
    assert errors == [] and frame.schema == batch_schema(FIELDS)
    assert frame.row(0) == ("a", 1000, 1, None, None, "ok", "", None, 0)


@pytest.mark.parametrize(
    ("columns", "field", "reason"),
    [
        ({"temp": ["21.5"]}, "$.temp", "column has type String"),  # a numeric field: numbers only
        ({"status": [[1]]}, "$.status", "column has type List"),  # an "any" field: scalars
        ({"unit": ["C"]}, "$", "none of the columns ['temp', 'humidity', 'status']"),
    ],
)
def test_arrow_batches_with_unusable_field_columns_are_rejected_once(
    columns: dict[str, list[object]], field: str, reason: str
) -> None:
    table = pa.table({"entity_id": ["a", "b"], "event_time": [1, 2], "sequence": [1, 2]})
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values * 2))
    frame, errors = decode_arrow(table, 0, MULTI)
    assert frame.height == 0 and frame.schema == batch_schema(FIELDS)
    assert [(e.row, e.field) for e in errors] == [(0, field)]
    assert errors[0].reason.startswith(reason)


def test_arrow_extra_is_the_canonical_json_of_the_other_columns_whatever_their_types() -> None:
    """The columnar encoding must write what :func:`canonical_json` writes for the row's Python
    values: equal events have equal identities, whichever the input format."""
    utc = dt.UTC
    others = {
        "f": pa.array([1.5, None, float("nan"), -0.0]),
        "big": pa.array([1e20, 1e16, None, 3.0]),  # polars would write 1e+20
        "f32": pa.array([0.1, 2.5, None, 1.0], pa.float32()),
        "s": ['a"\n\u2028', None, "é", ""],
        "b": [True, False, None, True],
        "l": [[1, 2], [], None, [3]],
        "st": [{"x": 1, "y": "z"}, None, {"x": None, "y": "w"}, {"x": 2, "y": ""}],
        "ts": pa.array(
            [
                dt.datetime(2020, 1, 1, tzinfo=utc),
                dt.datetime(2020, 1, 1, 0, 0, 0, 1000, tzinfo=utc),
                None,
                dt.datetime(2020, 1, 1, 0, 0, 1, 123456, tzinfo=utc),
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        "naive": pa.array([1_577_836_800_000, None, 1_577_840_523_004, None], pa.timestamp("ms")),  # no zone
        "bin": [b"ab", None, b"\xff", b""],
        "lb": [[b"a"], None, [], [b"\x00"]],
        "dec": pa.array([decimal.Decimal("1.50")] * 4, pa.decimal128(5, 2)),
        "date": pa.array([dt.date(2020, 1, 1)] * 4),
    }
    table = pa.table(
        {"entity_id": list("abcd"), "event_time": [1] * 4, "sequence": [1, 2, 3, 4], "value": [1.0] * 4}
    )
    for name, values in others.items():
        table = table.append_column(name, values if isinstance(values, pa.Array) else pa.array(values))
    frame, errors = decode_arrow(table, 0, LIMITS)
    assert errors == []
    expected = [canonical_json({k: row[k] for k in others}).decode() for row in table.to_pylist()]
    assert frame["extra"].to_list() == expected
    for dropped in (["lb"], ["big", "lb"]):  # a huge float alone; neither (the one-pass path)
        part = table.drop_columns(dropped)
        expected = [
            canonical_json({k: row[k] for k in others if k in part.column_names}).decode()
            for row in part.to_pylist()
        ]
        assert decode_arrow(part, 0, LIMITS)[0]["extra"].to_list() == expected
