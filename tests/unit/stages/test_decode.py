"""Strict decoding: every bad record names its row, field path and reason; nothing is coerced."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from headwater.cloudevents import encode_batch, split_batch
from headwater.models import canonical_json
from headwater.stages.decode import (
    DecodeLimits,
    decode_arrow,
    decode_cloudevent_batch,
    decode_csv_lines,
    decode_json_lines,
    decode_records,
)

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
