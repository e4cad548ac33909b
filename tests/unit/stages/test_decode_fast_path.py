"""The JSONL fast path (one typed decode per line, then columns) must give exactly the frame of
the per-record path, or decline the batch so that the per-record path names the bad records."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.featuresets import DEFAULT_FEATURES, FieldSpec
from headwater.stages import decode
from headwater.stages.decode import DecodeLimits, decode_json_lines, decode_records, records_frame

NOW = 1_700_000_000_000
TEMP = FieldSpec(name="temp", aggregations=("mean", "max"))
HUMIDITY = FieldSpec(name="humidity", aggregations=("count", "std"))
STATUS = FieldSpec(name="status", aggregations=("last", "count_distinct"))
VALUE_TEXT = FieldSpec(name="value", aggregations=("last",))
VALUE_NUMBER = FieldSpec(name="value", aggregations=("sum",))
FIELD_SETS = [
    (TEMP, HUMIDITY, STATUS),
    DEFAULT_FEATURES,
    (VALUE_TEXT,),
    (TEMP, VALUE_NUMBER),
    (STATUS, VALUE_TEXT),
    (STATUS,),
]
STRINGS = ["", "ok", "C", "é", "😀", 'a"b', "back\\slash", "tab\there", "nl\n", "\u2028", "\x01", "\x7f", "-"]
NUMBERS = [
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1",
    "-17",
    "2.5",
    "1e3",
    "1E-3",
    "-1.5e+2",
    "12.50",
    "0.1",
    "100.0",
    "1e16",
    "123456789012345678901234567890",
    "9007199254740993",
    "1.7976931348623157e308",
    "5e-324",
]


def text(value: str, rng: random.Random) -> str:
    """A JSON string, its characters written as they are or as \\u escapes."""
    if rng.random() < 0.3:
        escape = lambda c: ord(c) < 0x20 or (ord(c) < 0x10000 and rng.random() < 0.5)  # noqa: E731
        return '"' + "".join(f"\\u{ord(c):04x}" if escape(c) else c for c in value if c not in '"\\') + '"'
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def any_value(rng: random.Random, depth: int = 0) -> str:
    """The JSON text of any value, with varied spelling (spaces, escapes, number forms)."""
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return "null"
    if kind == 1:
        return rng.choice(["true", "false"])
    if kind in (2, 3):
        return rng.choice(NUMBERS)
    if kind == 4:
        return text(rng.choice(STRINGS), rng)
    if kind in (5, 6):
        items = [
            f"{text(rng.choice(STRINGS) + str(i), rng)}:{any_value(rng, depth + 1)}"
            for i in range(rng.randrange(3))
        ]
        return "{" + (", " if rng.random() < 0.3 else ",").join(items) + "}"
    return "[" + ",".join(any_value(rng, depth + 1) for _ in range(rng.randrange(3))) + "]"


UNDECLARED = ["unit", "note", "where", "n", "é", "a b", "Z", "_", "", "x`y"]


def payload(fields: tuple[FieldSpec, ...], rng: random.Random) -> list[tuple[str, str]]:
    """Any subset of the declared fields (at least one not null), some undeclared keys, any order."""
    items: dict[str, str] = {}
    for f in fields:
        if rng.random() < 0.25:
            continue
        if f.numeric:
            items[f.name] = rng.choice(NUMBERS)
        else:
            items[f.name] = text(rng.choice(STRINGS), rng) if rng.random() < 0.6 else any_value(rng)
    if all(v == "null" for v in items.values()):
        items[fields[0].name] = "1.5" if fields[0].numeric else '"x"'
    for key in rng.sample(UNDECLARED, rng.randrange(4)):
        items[key] = any_value(rng) if rng.random() < 0.5 else text(rng.choice(STRINGS), rng)
    pairs = list(items.items())
    rng.shuffle(pairs)
    return pairs


def signal(fields: tuple[FieldSpec, ...], n: int, rng: random.Random, by_value: bool) -> bytes:
    space = " " if rng.random() < 0.2 else ""
    t = str(NOW - rng.randrange(10**6)) if rng.random() < 0.9 else '"2023-11-14T22:13:20.123Z"'
    top = [
        ("entity_id", text(rng.choice(["a", "sensor-1", "é", "😀x"]), rng)),
        ("event_time", t),
        ("sequence", str(n)),
    ]
    if by_value:
        numeric = next(f.numeric for f in fields if f.name == "value")
        top.append(("value", rng.choice(NUMBERS) if numeric else any_value(rng).replace("null", '"n"')))
    else:
        items = payload(fields, rng)
        top.append(("payload", "{" + f",{space}".join(f"{text(k, rng)}:{space}{v}" for k, v in items) + "}"))
        if rng.random() < 0.1:
            top.append(("value", any_value(rng)))
    for key, value in (("source", '"gw"'), ("trace_id", "null"), ("other", "[1, {}]"), ("data", '{"x":1}')):
        if rng.random() < 0.1:
            top.append((key, value))
    rng.shuffle(top)
    return ("{" + ",".join(f'"{k}":{space}{v}' for k, v in top) + "}").encode() + rng.choice(
        [b"\n", b"", b"\r\n"]
    )


def exact(lines: list[bytes], first: int, limits: DecodeLimits) -> tuple[pl.DataFrame, list[Any]]:
    records, rows, errors = decode_records(lines, first, limits)
    return records_frame(records, rows, limits.fields), errors


def same_frames(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal schemas and equal values, bit for bit (-0.0 is not 0.0 here)."""
    assert a.schema == b.schema
    show = lambda v: repr(v) if isinstance(v, float) else v  # noqa: E731
    assert [tuple(map(show, r)) for r in a.rows()] == [tuple(map(show, r)) for r in b.rows()]


@pytest.fixture(params=[3, 2048])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Small chunks too, so that a batch spans several with different shapes and keys."""
    monkeypatch.setattr(decode, "_CHUNK", request.param)
    monkeypatch.setattr(decode, "_learned", {})
    return int(request.param)


@pytest.mark.parametrize("seed", range(40))
def test_the_fast_path_gives_the_frame_of_the_per_record_path(seed: int, chunk: int) -> None:
    rng = random.Random(seed)
    fields = FIELD_SETS[seed % len(FIELD_SETS)]
    limits = DecodeLimits(now_ms=NOW, max_record_bytes=4096, fields=fields)
    has_value = any(f.name == "value" for f in fields)
    mode = rng.choice(["payload", "value", "runs"]) if has_value else "payload"
    lines = []
    for n in range(rng.randrange(1, 60)):
        by_value = mode == "value" or (mode == "runs" and (n // 6) % 2 == 1)  # (in runs of 2 chunks)
        lines.append(signal(fields, n, rng, by_value))
        if mode != "runs" and rng.random() < 0.03:
            lines.append(rng.choice([b"\n", b"", b"  \t\n"]))
    expected, errors = exact(lines, 5, limits)
    assert errors == []
    fast = decode._fast_json_lines(lines, 5, limits)
    if mode != "runs" or chunk == 3:  # (runs of both shapes in one chunk: the per-record path)
        assert fast is not None
    if fast is not None:
        same_frames(fast, expected)
    same_frames(decode_json_lines(lines, 5, limits)[0], expected)
    same_frames(decode_json_lines(iter(lines), 5, limits)[0], expected)  # any iterable


def good(n: int, **payload: Any) -> bytes:
    body = {k: v for k, v in {"temp": 20.5, "unit": "C", "status": "ok", **payload}.items() if v is not ...}
    return json.dumps({"entity_id": "a", "event_time": NOW, "sequence": n, "payload": body}).encode()


CLIMATE = DecodeLimits(now_ms=NOW, max_record_bytes=300, fields=(TEMP, HUMIDITY, STATUS))
BAD = [
    b'{"entity_id": "a", ',
    b"[]",
    b"null",
    good(0, temp="20"),
    good(0, temp=None),
    good(0, temp=True),
    good(0, humidity=10**400),
    good(0, temp=..., status=None),
    json.dumps({"entity_id": "", "event_time": NOW, "sequence": 1, "payload": {"temp": 1}}).encode(),
    json.dumps({"entity_id": "x" * 257, "event_time": NOW, "sequence": 1, "payload": {"temp": 1}}).encode(),
    json.dumps({"entity_id": "a", "event_time": NOW + 10**9, "sequence": 1, "payload": {"temp": 1}}).encode(),
    json.dumps(
        {"entity_id": "a", "event_time": "2023-11-14T22:13:20", "sequence": 1, "payload": {"temp": 1}}
    ).encode(),
    json.dumps({"entity_id": "a", "event_time": NOW, "sequence": 2**63, "payload": {"temp": 1}}).encode(),
    json.dumps({"entity_id": "a", "event_time": NOW, "sequence": 1.0, "payload": {"temp": 1}}).encode(),
    json.dumps(
        {"entity_id": "a", "event_time": NOW, "sequence": 1, "source": 5, "payload": {"temp": 1}}
    ).encode(),
    json.dumps({"entity_id": "a", "event_time": NOW, "sequence": 1, "payload": []}).encode(),
    json.dumps(
        {"entity_id": "a", "event_time": NOW, "sequence": 1, "value": 1.5}
    ).encode(),  # no declared field
    json.dumps({"specversion": "1.0", "id": "1", "source": "s", "data": json.loads(good(1))}).encode(),
    good(0, note="x" * 400),  # over the size limit
    good(0, **{'q"uote': 1}),  # a key the fast path cannot learn: declines, the exact path takes it
    good(0)[:-1] + b', "value": 1e999}',  # ignored beside a payload, but decoded: out of range
    good(0)[:-1] + b', "value": "\xff"}',  # invalid UTF-8 there
    good(0)[:-1] + b', "other": "\xff", "data": 1e999}',  # skipped by both paths: a good line
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":"x","temp":1.5}}',  # last wins
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1,"temp":null}}',
    b'{"entity_id":7,"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1}}',
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1},"payload":null}',
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1},"specversion":null}',
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1}} {}',
    b'{"entity_id":"a","event_time":1,"sequence":1,"payload":{"temp":1, "x": [1,\n2]}}',
]


@pytest.mark.parametrize("bad", BAD)
def test_one_bad_line_among_good_ones_gives_the_errors_of_the_per_record_path(bad: bytes, chunk: int) -> None:
    lines = [good(n, humidity=40.0 + n) if n % 3 else good(n) for n in range(9)]
    lines.insert(4, bad)
    expected, errors = exact(lines, 1, CLIMATE)
    frame, got = decode_json_lines(lines, 1, CLIMATE)
    same_frames(frame, expected)
    assert got == errors
    if errors:
        assert decode._fast_json_lines(lines, 1, CLIMATE) is None


def test_undeclared_keys_are_learned_and_null_is_not_absent(chunk: int) -> None:
    lines = [
        good(1),
        good(2, note=None),
        good(3, note="x", extra_key={"b": [1, None], "a": -0.0}),
        good(4, unit=None),
    ]
    lines += [good(n, unit="F") for n in range(5, 12)]
    fast = decode._fast_json_lines(lines, 1, CLIMATE)
    assert fast is not None
    same_frames(fast, exact(lines, 1, CLIMATE)[0])
    assert fast["extra"].to_list()[:4] == [
        '{"unit":"C"}',
        '{"note":null,"unit":"C"}',
        '{"extra_key":{"a":-0.0,"b":[1,null]},"note":"x","unit":"C"}',
        '{"unit":null}',
    ]


def test_values_keep_their_exact_float() -> None:
    raw = [
        b'{"entity_id":"a","event_time":1,"sequence":%d,"value":%s}' % (i, v.encode())
        for i, v in enumerate(NUMBERS)
    ]
    frame = decode._fast_json_lines(raw, 1, DecodeLimits(now_ms=NOW))
    assert frame is not None
    assert [math.copysign(1, v) for v in frame["value"]] == [
        math.copysign(1, float(json.loads(v))) for v in NUMBERS
    ]
    same_frames(frame, exact(raw, 1, DecodeLimits(now_ms=NOW))[0])


def test_keys_are_learned_once_and_forgotten_when_no_longer_sent(chunk: int) -> None:
    first = [good(n, note=f"n{n}", **{"tag": n}) for n in range(8)]
    assert decode._fast_json_lines(first, 1, CLIMATE) is not None
    assert decode._learned[CLIMATE.fields] == ("note", "tag", "unit")
    second = [good(n) for n in range(8)]
    frame = decode._fast_json_lines(second, 1, CLIMATE)
    assert frame is not None and decode._learned[CLIMATE.fields] == ("unit",)
    same_frames(frame, exact(second, 1, CLIMATE)[0])
    unlearnable = [good(n, **{"a\\b": 1}) for n in range(8)]
    assert decode._fast_json_lines(unlearnable, 1, CLIMATE) is None
    assert decode._learned[CLIMATE.fields] == ("unit",)
    same_frames(decode_json_lines(unlearnable, 1, CLIMATE)[0], exact(unlearnable, 1, CLIMATE)[0])


JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
PAYLOADS = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["unit", "n", "é", "", "deep", "s p"]), JSON, max_size=4),
        st.one_of(st.none(), JSON),  # status
        st.one_of(st.none(), st.integers(-(2**60), 2**60), st.floats(-1e300, 1e300)),  # temp
        st.booleans(),  # ensure_ascii
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PAYLOADS)
def test_any_json_values_decode_as_on_the_per_record_path(chunk: int, events: list[Any]) -> None:
    lines = []
    for n, (undeclared, status, temp, ascii_only) in enumerate(events):
        body = {**undeclared, "status": status if status is not None or temp is not None else "x"}
        if temp is not None:
            body["temp"] = temp
        signal = {"entity_id": "a", "event_time": NOW, "sequence": n, "payload": body}
        lines.append(json.dumps(signal, ensure_ascii=ascii_only).encode())
    limits = DecodeLimits(now_ms=NOW, max_record_bytes=10**6, fields=(TEMP, STATUS))
    expected, errors = exact(lines, 1, limits)
    assert errors == []
    fast = decode._fast_json_lines(lines, 1, limits)
    assert fast is not None
    same_frames(fast, expected)
