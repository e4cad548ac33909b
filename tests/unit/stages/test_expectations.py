"""Data-quality expectations (#19): the declaration's parsing and the pure stage that checks a batch."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from headwater.errors import ConfigError
from headwater.events import ExpectationCount
from headwater.featuresets import Expectations, FeatureSetSpec, build_feature_set
from headwater.stages.decode import DecodeLimits, InvalidRecord, decode_json_lines
from headwater.stages.expectations import check_expectations

FEATURES = {"temp": ["mean", "max"], "humidity": ["mean"], "status": ["last"]}
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def spec(expectations: dict[str, Any], features: dict[str, Any] | None = None) -> FeatureSetSpec:
    return build_feature_set("climate", {"features": features or FEATURES, "expectations": expectations})


def batch(s: FeatureSetSpec, *payloads: dict[str, Any], t0: int = NOW - 5000) -> pl.DataFrame:
    lines = [
        msgspec.json.encode({"entity_id": "a", "event_time": t0 + i, "sequence": i, "payload": p})
        for i, p in enumerate(payloads)
    ]
    frame, errors = decode_json_lines(lines, 1, DecodeLimits(now_ms=NOW, fields=s.features))
    assert errors == []
    return frame


def counts(failures: tuple[ExpectationCount, ...]) -> dict[tuple[str, str, str], int]:
    return {(f.field, f.expectation, f.on_fail): f.count for f in failures}


def test_nothing_declared_returns_the_frame_itself() -> None:
    s = build_feature_set("climate", {"features": FEATURES})
    assert not s.expectations
    frame = batch(s, {"temp": 1e9})
    checked = check_expectations(frame, s.expectations, NOW)
    assert checked.frame is frame and checked.failures == () and checked.rejected == ()


def test_bounds_are_inclusive_and_dlq_names_expectation_field_and_value() -> None:
    s = spec({"temp": {"min": -40, "max": 60, "on_fail": "dlq"}})
    frame = batch(s, {"temp": -40}, {"temp": 60}, {"temp": 75.2}, {"temp": -40.5}, {"humidity": 1.0})
    checked = check_expectations(frame, s.expectations, NOW)
    assert checked.frame["row"].to_list() == [1, 2, 5]  # bounds kept, a null passes min/max
    assert checked.rejected == (
        InvalidRecord(row=3, field="temp", reason="expectation max=60 failed: 75.2"),
        InvalidRecord(row=4, field="temp", reason="expectation min=-40 failed: -40.5"),
    )
    assert counts(checked.failures) == {("temp", "min", "dlq"): 1, ("temp", "max", "dlq"): 1}
    assert checked.frame.schema == frame.schema


def test_warn_keeps_the_events_and_counts_them() -> None:
    s = spec({"temp": {"max": 60}, "humidity": {"not_null": True}})
    frame = batch(s, {"temp": 75.2}, {"temp": 61, "humidity": 2.0}, {"temp": 1, "humidity": 2.0})
    checked = check_expectations(frame, s.expectations, NOW)
    assert checked.frame.equals(frame) and checked.rejected == ()
    assert counts(checked.failures) == {("temp", "max", "warn"): 2, ("humidity", "not_null", "warn"): 1}
    assert checked.failed == 3


def test_not_null_on_a_text_field_catches_absent_and_json_null() -> None:
    s = spec({"status": {"not_null": True, "on_fail": "dlq"}})
    frame = batch(s, {"temp": 1, "status": "ok"}, {"temp": 1, "status": None}, {"temp": 1})
    checked = check_expectations(frame, s.expectations, NOW)
    assert [(r.row, r.reason) for r in checked.rejected] == [
        (2, "expectation not_null failed: null"),
        (3, "expectation not_null failed: null"),
    ]


def test_allowed_compares_the_text_form_of_any_json_value() -> None:
    """Decode keeps a non-numeric field as text: a string as it is, anything else as compact JSON;
    allowed values are brought to the same form, so 1, true and {"a": 1} can be allowed."""
    s = spec({"status": {"allowed": ["ok", 1, True, {"a": 1}], "on_fail": "dlq"}})
    frame = batch(
        s,
        {"status": "ok"},
        {"status": 1},
        {"status": True},
        {"status": {"a": 1}},
        {"status": "bad"},
        {"status": 2.5},
        {"status": False},
        {"temp": 3},  # absent: a null passes allowed
    )
    checked = check_expectations(frame, s.expectations, NOW)
    assert checked.frame["row"].to_list() == [1, 2, 3, 4, 8]
    assert [(r.row, r.reason) for r in checked.rejected] == [
        (5, "expectation allowed=['ok', '1', 'true', '{\"a\":1}'] failed: 'bad'"),
        (6, "expectation allowed=['ok', '1', 'true', '{\"a\":1}'] failed: '2.5'"),
        (7, "expectation allowed=['ok', '1', 'true', '{\"a\":1}'] failed: 'false'"),
    ]


def test_an_event_failing_several_dlq_checks_is_dead_lettered_once_counted_under_each() -> None:
    s = spec({"temp": {"max": 60, "on_fail": "dlq"}, "status": {"allowed": ["ok"], "on_fail": "dlq"}})
    checked = check_expectations(batch(s, {"temp": 99, "status": "no"}), s.expectations, NOW)
    assert [r.field for r in checked.rejected] == ["temp"] and checked.frame.height == 0
    assert counts(checked.failures) == {("temp", "max", "dlq"): 1, ("status", "allowed", "dlq"): 1}


def test_freshness_is_per_batch_never_dead_letters_and_is_skipped_without_a_clock() -> None:
    s = spec({"freshness": "10m", "temp": {"max": 60}})
    fresh = batch(s, {"temp": 1}, t0=NOW - 600_000)  # exactly 10 minutes old: fresh
    assert check_expectations(fresh, s.expectations, NOW).failures == ()
    stale = batch(s, {"temp": 1}, {"temp": 2}, t0=NOW - 600_002)  # newest is 600_001 ms old
    checked = check_expectations(stale, s.expectations, NOW)
    assert counts(checked.failures) == {("event_time", "freshness", "warn"): 1}
    assert checked.newest_event_age_ms == 600_001 and checked.frame is stale
    assert check_expectations(stale, s.expectations, None).failures == ()  # backfills
    empty = stale.clear()
    assert check_expectations(empty, s.expectations, NOW).failures == ()


def test_expectations_are_part_of_the_fingerprint_and_absent_ones_change_nothing() -> None:
    plain = build_feature_set("climate", {"features": FEATURES})
    checked = spec({"temp": {"max": 60}})
    other = spec({"temp": {"max": 61}})
    assert len({plain.fingerprint(), checked.fingerprint(), other.fingerprint()}) == 3
    assert b"expectations" not in plain.fingerprint()  # the bytes of a spec from before #19
    assert plain.expectations == Expectations()


@pytest.mark.parametrize(
    ("expectations", "message"),
    [
        ({"pressure": {"max": 1}}, "'pressure' is not a field of the feature set (declared: temp, humidity"),
        ({"temp": {"maximum": 1}}, "unknown key 'maximum' (did you mean 'max'?)"),
        ({"temp": {"min": 5, "max": 1}}, "temp: min 5 > max 1"),
        ({"temp": {"allowed": [1, 2]}}, "allowed is for non-numeric fields"),
        ({"status": {"min": 0}}, "min/max need a numeric field"),
        ({"temp": {"max": "60"}}, "max must be a finite number, got '60'"),
        ({"temp": {"max": True}}, "max must be a finite number, got True"),
        ({"temp": {"max": float("nan")}}, "max must be a finite number"),
        ({"temp": {"max": 1, "on_fail": "drop"}}, 'on_fail must be "warn" or "dlq", got \'drop\''),
        ({"temp": {"on_fail": "dlq"}}, "temp: declares no check"),
        ({"temp": {"not_null": "yes"}}, "not_null must be true or false"),
        ({"status": {"allowed": []}}, "allowed must be a non-empty list"),
        ({"status": {"allowed": "ok"}}, "allowed must be a non-empty list"),
        ({"temp": 60}, "[feature_sets.climate.expectations] temp must be a table"),
        ({"freshness": "soon"}, "invalid duration 'soon'"),
        ({"freshness": 0}, "freshness must be more than 0"),
        ({"freshness": [1]}, "freshness must be a duration"),
    ],
)
def test_a_bad_declaration_is_one_clear_config_error(expectations: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        spec(expectations)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_expectations_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[feature_sets.climate.expectations\] must be a table"):
        build_feature_set("climate", {"features": FEATURES, "expectations": ["temp"]})


def test_a_field_named_freshness_takes_its_table() -> None:
    s = spec({"freshness": {"max": 1}, "temp": {"max": 60}}, {"freshness": ["max"], "temp": ["max"]})
    assert [f.field for f in s.expectations.fields] == ["freshness", "temp"]
    assert s.expectations.freshness_ms is None


def test_flag_fields_that_drop_a_checked_field_are_refused() -> None:
    declared = {"features": FEATURES, "expectations": {"status": {"allowed": ["ok"]}}}
    with pytest.raises(ConfigError, match="'status' is not a field"):
        build_feature_set("climate", declared, features="temp:mean")


def test_the_readme_declaration_parses() -> None:
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text[text.index("**Data-quality expectations.**") :]
    start = section.index("```toml\n") + len("```toml\n")
    table = tomllib.loads(section[start : section.index("```\n", start)])
    s = spec(table["feature_sets"]["climate"]["expectations"])
    assert [f.field for f in s.expectations.fields] == ["temp", "humidity", "status"]
    assert s.expectations.freshness_ms == 600_000 and s.expectations.fields[0].on_fail == "dlq"
