"""Property: fields a feature set does not use never change its rows (issue #16), whatever their
type and wherever they sit in the payload: not the decoded values of the declared fields, not
whether an event is accepted, and so not the engine's rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file, any import mode
from test_signal_engine import TUMBLING, final_rows, make_spec

from headwater.cloudevents import encode_batch
from headwater.featuresets import DEFAULT_FEATURES, FieldSpec
from headwater.stages.decode import DecodeLimits, decode_cloudevent_batch, decode_json_lines
from headwater.stages.features import EngineState, flush, process_batch

BASE = 1_700_000_000_000
FIELDS = (
    FieldSpec(name="temp", aggregations=("count", "sum", "min", "max", "std")),
    FieldSpec(name="humidity", aggregations=("mean",)),
    FieldSpec(name="status", aggregations=("count", "last", "count_distinct")),
)
NAMES = {f.name for f in FIELDS} | {"value"}
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.text(max_size=12), st.integers(), st.floats(-1e6, 1e6))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
NUMBERS = st.one_of(st.floats(-1e3, 1e3).map(lambda x: round(x, 3)), st.integers(-1000, 1000))
EXTRAS = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in NAMES), JSON_VALUES, max_size=4)
)


def multi_field_payloads() -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the declared fields, at least one present (a null "any" field is absent)."""
    status = JSON_VALUES.filter(lambda v: v is not None)
    return st.fixed_dictionaries(
        {}, optional={"temp": NUMBERS, "humidity": NUMBERS, "status": st.one_of(status, st.none())}
    ).filter(lambda p: any(p.get(k) is not None for k in ("temp", "humidity", "status")))


def signal_lines(
    payloads: list[tuple[str, int, dict[str, Any]]], extras: list[dict[str, Any]], with_extras: bool
) -> list[bytes]:
    out = []
    for i, (entity, t, declared) in enumerate(payloads):
        extra = extras[i % len(extras)] if with_extras and extras else {}
        payload = {**extra, **declared} if i % 2 else {**declared, **extra}  # before or after
        signal = {"entity_id": entity, "event_time": BASE + t, "sequence": i, "payload": payload}
        out.append(json.dumps(signal).encode())
    return out


EVENTS = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 20_000), multi_field_payloads()), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, EXTRAS)
def test_undeclared_fields_never_change_the_declared_values_nor_reject_an_event(
    events: list[tuple[str, int, dict[str, Any]]], extras: list[dict[str, Any]]
) -> None:
    limits = DecodeLimits(now_ms=BASE + 10**9, fields=FIELDS)
    plain, plain_errors = decode_json_lines(signal_lines(events, extras, with_extras=False), 1, limits)
    mixed, mixed_errors = decode_json_lines(signal_lines(events, extras, with_extras=True), 1, limits)
    assert plain_errors == [] and mixed_errors == []
    assert mixed.drop("extra").equals(plain.drop("extra"))
    assert set(plain["extra"]) <= {""}
    batch = encode_batch(
        [
            b'{"specversion":"1.0","id":"%d","source":"s","type":"t","data":%s}' % (i, raw)
            for i, raw in enumerate(signal_lines(events, extras, with_extras=True))
        ]
    )
    fast = decode_cloudevent_batch(batch, limits)  # the stream's one-decode path agrees
    assert (
        fast is not None
        and [r[3:7] for r in fast] == mixed.select("temp", "humidity", "status", "extra").rows()
    )


def rows_of(lines: list[bytes], fields: tuple[FieldSpec, ...]) -> list[tuple[Any, ...]]:
    frame, errors = decode_json_lines(lines, 1, DecodeLimits(now_ms=BASE + 10**9, fields=fields))
    assert errors == []
    spec = make_spec(TUMBLING, features=fields)
    state, result = process_batch(EngineState(), frame, spec)
    _, last = flush(state, spec)
    rows = pl.concat([result.rows, last.rows])
    return sorted((k, *(r[c] for c in spec.window_columns)) for k, r in final_rows(rows).items())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"), st.integers(0, 20_000), st.floats(-1e3, 1e3).map(lambda x: round(x, 3))
        ),
        min_size=1,
        max_size=40,
    ),
    EXTRAS,
)
def test_unused_payload_fields_never_change_the_rows(
    events: list[tuple[str, int, float]], extras: list[dict[str, Any]]
) -> None:
    payloads = [(entity, t, {"value": value}) for entity, t, value in events]
    assert rows_of(signal_lines(payloads, extras, with_extras=True), DEFAULT_FEATURES) == rows_of(
        signal_lines(payloads, extras, with_extras=False), DEFAULT_FEATURES
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, EXTRAS)
def test_unused_payload_fields_never_change_the_rows_of_a_multi_field_feature_set(
    events: list[tuple[str, int, dict[str, Any]]], extras: list[dict[str, Any]]
) -> None:
    assert rows_of(signal_lines(events, extras, with_extras=True), FIELDS) == rows_of(
        signal_lines(events, extras, with_extras=False), FIELDS
    )
