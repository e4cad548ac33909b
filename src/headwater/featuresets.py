"""Feature set declarations: what to compute, declared once, run unchanged by every engine.

A feature set names its windows, aggregations, lateness and late policy. The batch backfill,
the stream worker and (later) Spark all take a :class:`FeatureSetSpec` and hand it to the same
stage functions, so their FeatureRows cannot drift apart. Declarations come from
``headwater.toml`` (``[feature_sets.NAME]`` tables) or from CLI flags; both parse through here.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Literal

import msgspec

from headwater.errors import ConfigError
from headwater.models import canonical_json

LatePolicy = Literal["drop", "hold", "correct"]
OnFail = Literal["warn", "dlq"]
NUMERIC_WINDOW_AGGREGATIONS = ("sum", "mean", "min", "max", "std")
ANY_WINDOW_AGGREGATIONS = ("count", "last", "count_distinct")
WINDOW_AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "last", "count_distinct")
POINT_AGGREGATIONS = ("ewma", "zscore")
AGGREGATIONS = (*WINDOW_AGGREGATIONS, *POINT_AGGREGATIONS)
NUMERIC_AGGREGATIONS = (*NUMERIC_WINDOW_AGGREGATIONS, *POINT_AGGREGATIONS)
"""Aggregations that need a finite number; count, last and count_distinct take any value."""
DEFAULT_AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "ewma", "zscore")
RESERVED_FIELDS = frozenset(
    {
        "entity_id", "event_time", "sequence", "extra", "ce_key", "row", "wm_before", "evict_at",
        "window_ms", "window_start", "window_start_ms", "watermark_ms", "policy", "reason",
        "feature_set", "version", "revision", "content_hash", "input_ref", "date", "n", "kind",
    }
)  # fmt: skip
"""Column names the engine and the stores use beside the fields: a field cannot take one."""
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration_ms(text: str | int) -> int:
    """``"1s"`` → 1000, ``"1m"`` → 60000, a bare integer is milliseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _DURATION.match(str(text))
    if match is None:
        msg = f"invalid duration {text!r}: expected an integer with a unit ms, s, m, h or d"
        raise ConfigError(msg)
    return int(match.group(1)) * _UNITS_MS[match.group(2) or "ms"]


def duration_label(ms: int) -> str:
    """The inverse of ``parse_duration_ms`` in the largest exact unit: 60000 → ``"1m"``."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


class WindowSpec(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """A window family: tumbling when ``slide_ms == size_ms``, sliding (hopping) otherwise."""

    size_ms: int
    slide_ms: int

    @property
    def label(self) -> str:
        return f"{self.size_ms}ms" if self.slide_ms == self.size_ms else f"{self.size_ms}ms/{self.slide_ms}ms"


def parse_window(text: str) -> WindowSpec:
    """``"5s"`` is tumbling; ``"1m/10s"`` (or ``"1m every 10s"``) slides every 10 s."""
    size_text, _, slide_text = text.replace(" every ", "/").partition("/")
    size = parse_duration_ms(size_text)
    slide = parse_duration_ms(slide_text) if slide_text else size
    if size <= 0 or slide <= 0 or slide > size:
        msg = f"invalid window {text!r}: need 0 < slide <= size"
        raise ConfigError(msg)
    return WindowSpec(size_ms=size, slide_ms=slide)


class FieldSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One payload field and what to compute from it: window aggregations become the columns
    ``{name}_{aggregation}`` of a window row, ``ewma``/``zscore`` the point columns of an event."""

    name: str
    aggregations: tuple[str, ...]

    @property
    def numeric(self) -> bool:
        """A numeric field's values must be finite numbers (else the event is dead-lettered);
        any other field takes any JSON value (strings, booleans, objects: compared as text)."""
        return any(a in NUMERIC_AGGREGATIONS for a in self.aggregations)

    @property
    def window_aggregations(self) -> tuple[str, ...]:
        return tuple(a for a in self.aggregations if a in WINDOW_AGGREGATIONS)

    @property
    def point_aggregations(self) -> tuple[str, ...]:
        return tuple(a for a in self.aggregations if a in POINT_AGGREGATIONS)

    def columns(self, aggregations: tuple[str, ...]) -> list[str]:
        return [f"{self.name}_{a}" for a in aggregations]


DEFAULT_FEATURES = (FieldSpec(name="value", aggregations=DEFAULT_AGGREGATIONS),)


class FieldExpectation(msgspec.Struct, frozen=True, kw_only=True):
    """What one declared field's values must satisfy. ``min``/``max`` (inclusive) on a numeric
    field, ``allowed`` on any other (values in their text form: a string as it is, any other JSON
    value as compact JSON), ``not_null`` on either. A null passes ``min``, ``max`` and ``allowed``:
    only ``not_null`` judges absence. ``on_fail = "warn"`` keeps and counts a failing event,
    ``"dlq"`` removes it before dedup and windows and dead-letters it."""

    field: str
    min: float | None = None
    max: float | None = None
    not_null: bool = False
    allowed: tuple[str, ...] | None = None
    on_fail: OnFail = "warn"


class Expectations(msgspec.Struct, frozen=True, kw_only=True):
    """A feature set's data-quality expectations (``[feature_sets.NAME.expectations]``).

    ``freshness_ms``: the newest event of a stream micro-batch must be no older than now minus
    this (counted, never dead-lettered; backfills replay history and skip it)."""

    fields: tuple[FieldExpectation, ...] = ()
    freshness_ms: int | None = None

    def __bool__(self) -> bool:
        return bool(self.fields) or self.freshness_ms is not None


class FeatureSetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One declared feature set. ``version`` is part of every row's key: bump it when semantics change.

    ``features`` are the payload fields it reads, each with its aggregations; one pass over the
    input serves them all. ``correct_horizon_ms`` bounds how long closed windows stay correctable
    (policy ``correct``); later events are dropped into the late table. ``points = False`` turns
    the per-event EWMA and z-score off whatever the fields ask.
    """

    name: str
    version: int = 1
    windows: tuple[WindowSpec, ...] = (
        WindowSpec(size_ms=1000, slide_ms=1000),
        WindowSpec(size_ms=5000, slide_ms=5000),
        WindowSpec(size_ms=60_000, slide_ms=60_000),
    )
    features: tuple[FieldSpec, ...] = DEFAULT_FEATURES
    lateness_ms: int = 2000
    late_policy: LatePolicy = "drop"
    correct_horizon_ms: int = 600_000
    ewma_alpha: float = 0.1
    zscore_window_ms: int = 60_000
    points: bool = True
    expectations: Expectations = Expectations()

    @property
    def point_fields(self) -> tuple[FieldSpec, ...]:
        """The numeric fields with EWMA or z-score (none when ``points`` is off)."""
        return tuple(f for f in self.features if f.point_aggregations) if self.points else ()

    @property
    def window_columns(self) -> list[str]:
        """The declared window-row columns, ``{field}_{aggregation}``, in declaration order."""
        return [c for f in self.features for c in f.columns(f.window_aggregations)]

    @property
    def point_columns(self) -> list[str]:
        """A point row's feature columns: each point field's value, then its EWMA and z-score."""
        return [c for f in self.point_fields for c in [f.name, *f.columns(f.point_aggregations)]]

    def fingerprint(self) -> bytes:
        """Canonical bytes of the declaration (checkpoints refuse to resume across a change).
        Without expectations they are the bytes of a spec from before expectations existed, so
        upgrading resumes the checkpoints of unchanged declarations."""
        if self.expectations:
            return msgspec.json.encode(self, order="sorted")
        declared: dict[str, Any] = msgspec.to_builtins(self)
        del declared["expectations"]
        return msgspec.json.encode(declared, order="sorted")

    @property
    def dedup_horizon_ms(self) -> int:
        """Extra time, past the close of the largest window, that dedup state is kept: under
        ``correct`` and ``hold`` a late copy of a counted event must still be recognised (else a
        correction or a release would count it twice)."""
        return self.correct_horizon_ms if self.late_policy in ("correct", "hold") else 0


_SHORT_KEYS = ("windows", "lateness", "correct_horizon", "zscore_window", "policy", "aggregations", "field")
DECLARATION_KEYS = frozenset({*_SHORT_KEYS, *FeatureSetSpec.__struct_fields__})
"""The keys a ``[feature_sets.NAME]`` table may have (``lateness = "2s"`` or ``lateness_ms = 2000``)."""


def check_declaration_keys(name: str, declared: Any) -> None:
    """An unknown key (``polcy``) is an error naming it and the nearest valid one: ignored, it
    would leave the default in place without a word."""
    if not isinstance(declared, dict):
        msg = f"[feature_sets.{name}] is not a table: declare it as [feature_sets.{name}] with its keys"
        raise ConfigError(msg)
    problems = []
    for key in declared:
        if key not in DECLARATION_KEYS:
            close = difflib.get_close_matches(str(key), sorted(DECLARATION_KEYS), n=1, cutoff=0.6)
            known = ", ".join(sorted(DECLARATION_KEYS - {"name"}))
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {known})"
            problems.append(f"unknown key {key!r} in [feature_sets.{name}]{hint}")
    if problems:
        raise ConfigError("; ".join(problems))


def build_feature_set(name: str, declared: dict[str, Any] | None = None, **overrides: Any) -> FeatureSetSpec:
    """Merge a ``headwater.toml`` table with CLI overrides (None = not given) and validate it.

    Both sides are brought to the declaration's own names first (``policy`` → ``late_policy``,
    ``lateness = "2s"`` → ``lateness_ms``), so a flag overrides a key whichever spelling each uses;
    fields given as flags replace the declared fields whole."""
    check_declaration_keys(name, declared or {})
    try:
        base = _canonical(name, dict(declared or {}))
        given = _canonical(name, {key: value for key, value in overrides.items() if value is not None})
        merged = {**base, **given, "name": name}
        expectations = merged.pop("expectations", None)
        spec = msgspec.convert(merged, FeatureSetSpec)
    except (msgspec.ValidationError, TypeError) as exc:
        msg = f"invalid feature set {name!r}: {exc}"
        raise ConfigError(msg) from exc
    _check(spec)
    if expectations is not None:
        parsed = parse_expectations(name, expectations, spec.features)
        spec = msgspec.structs.replace(spec, expectations=parsed)
    return spec


_SPELLINGS = {
    "lateness": "lateness_ms",
    "correct_horizon": "correct_horizon_ms",
    "zscore_window": "zscore_window_ms",
    "policy": "late_policy",
}


def _canonical(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A declaration or a set of overrides in FeatureSetSpec's own names and types."""
    raw.pop("name", None)
    out: dict[str, Any] = {}
    if "windows" in raw:
        windows = raw.pop("windows")
        if isinstance(windows, str):
            windows = [w for w in windows.split(",") if w.strip()]
        out["windows"] = tuple(sorted({parse_window(str(w)) for w in windows}))
    for short, full in _SPELLINGS.items():
        if short in raw:
            raw[full] = raw.pop(short)
    for key in ("lateness_ms", "correct_horizon_ms", "zscore_window_ms"):
        if key in raw:
            out[key] = parse_duration_ms(raw.pop(key))
    if {"features", "field", "aggregations"} & raw.keys():
        try:
            out["features"] = parse_features(
                raw.pop("features", None), raw.pop("field", None), raw.pop("aggregations", None)
            )
        except ConfigError as exc:
            msg = f"invalid feature set {name!r}: {exc}"
            raise ConfigError(msg) from None
    return {**out, **raw}


def parse_features(declared: Any, field: Any = None, aggregations: Any = None) -> tuple[FieldSpec, ...]:
    """``{"temp": ["mean", "max"], ...}`` (a TOML table), ``"temp:mean,max;humidity:mean"`` (a
    flag), or the older ``field`` + ``aggregations`` keys (one field) → the fields, validated."""
    if declared is not None and (field is not None or aggregations is not None):
        msg = "declare either features or field/aggregations, not both"
        raise ConfigError(msg)
    if declared is None:
        aggs = _aggregation_list(aggregations) if aggregations is not None else DEFAULT_AGGREGATIONS
        declared = {str(field or "value"): aggs}
    if isinstance(declared, str):
        declared = _features_text(declared)
    if not isinstance(declared, dict) or not declared:
        msg = 'features must be a table of field = [aggregations], e.g. temp = ["mean", "max"]'
        raise ConfigError(msg)
    out = []
    for name, aggs in declared.items():
        problem = _field_problem(str(name))
        if problem:
            raise ConfigError(problem)
        listed = _aggregation_list(aggs)
        unknown = [a for a in listed if a not in AGGREGATIONS]
        if unknown or not listed:
            msg = f"field {name!r}: unknown aggregations {unknown} (known: {', '.join(AGGREGATIONS)})"
            raise ConfigError(msg if listed else f"field {name!r} has no aggregations")
        out.append(FieldSpec(name=str(name), aggregations=tuple(dict.fromkeys(listed))))
    return tuple(out)


def _aggregation_list(aggs: Any) -> list[str]:
    if isinstance(aggs, str):
        return [a.strip() for a in aggs.split(",") if a.strip()]
    if isinstance(aggs, (list, tuple)):
        return [str(a).strip() for a in aggs]
    msg = f'aggregations must be a list such as ["mean", "max"], got {aggs!r}'
    raise ConfigError(msg)


def _features_text(text: str) -> dict[str, list[str]]:
    """``"temp:mean,max;humidity:mean"`` → ``{"temp": ["mean", "max"], "humidity": ["mean"]}``."""
    out: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, colon, aggs = part.partition(":")
        if not colon or not name.strip():
            msg = f"invalid --features part {part!r}: expected FIELD:AGG[,AGG...], e.g. temp:mean,max"
            raise ConfigError(msg)
        out.setdefault(name.strip(), []).extend(_aggregation_list(aggs))
    return out


def _field_problem(name: str) -> str | None:
    if not _FIELD_NAME.match(name):
        return f"field name {name!r} must be a letter or _ then letters, digits or _ (at most 63)"
    if name in RESERVED_FIELDS:
        return (
            f"field name {name!r} is reserved (used beside the fields: {', '.join(sorted(RESERVED_FIELDS))})"
        )
    return None


def _check(spec: FeatureSetSpec) -> None:
    problems = []
    if not spec.windows:
        problems.append("no windows")
    if not spec.window_columns:
        problems.append("no window aggregations (declare at least one of count, sum, mean, ...)")
    if spec.lateness_ms < 0 or spec.correct_horizon_ms < 0:
        problems.append("lateness and correct_horizon must be >= 0")
    if not 0.0 < spec.ewma_alpha <= 1.0:
        problems.append("ewma_alpha must be in (0, 1]")
    if not 0 <= spec.version <= 2**31 - 1 or spec.zscore_window_ms <= 0:
        problems.append("version must be between 0 and 2**31 - 1 and zscore_window > 0")
    if problems:
        msg = f"invalid feature set {spec.name!r}: {'; '.join(problems)}"
        raise ConfigError(msg)


EXPECTATION_KEYS = ("min", "max", "not_null", "allowed", "on_fail")
FRESHNESS = "freshness"


def parse_expectations(name: str, declared: Any, features: tuple[FieldSpec, ...]) -> Expectations:
    """``[feature_sets.NAME.expectations]``: ``FIELD = { min = .., max = .., not_null = true,
    allowed = [..], on_fail = "warn" | "dlq" }`` per declared field, and ``freshness = "10m"``.
    Only declared fields can be checked (the others are carried as JSON in ``extra``, unparsed);
    a field declared ``freshness`` takes its table, the batch freshness a duration."""
    where = f"[feature_sets.{name}.expectations]"
    if not isinstance(declared, dict):
        msg = f'{where} must be a table of FIELD = {{ min = .., max = .., ... }} and freshness = "10m"'
        raise ConfigError(msg)
    by_name = {f.name: f for f in features}
    fields: list[FieldExpectation] = []
    freshness_ms = None
    for key, value in declared.items():
        if key == FRESHNESS and not isinstance(value, dict):
            freshness_ms = _freshness(where, value)
            continue
        field = by_name.get(str(key))
        if field is None:
            known = ", ".join(by_name)
            msg = f"{where}: {key!r} is not a field of the feature set (declared: {known}; or freshness)"
            raise ConfigError(msg)
        fields.append(_field_expectation(f"{where} {key}", field, value))
    return Expectations(fields=tuple(fields), freshness_ms=freshness_ms)


def _freshness(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        msg = f'{where}: freshness must be a duration such as "10m", got {value!r}'
        raise ConfigError(msg)
    ms = parse_duration_ms(value)
    if ms <= 0:
        msg = f"{where}: freshness must be more than 0, got {value!r}"
        raise ConfigError(msg)
    return ms


def _field_expectation(where: str, field: FieldSpec, declared: Any) -> FieldExpectation:
    if not isinstance(declared, dict):
        msg = f'{where} must be a table such as {{ min = 0, max = 100, on_fail = "dlq" }}, got {declared!r}'
        raise ConfigError(msg)
    for key in declared:
        if key not in EXPECTATION_KEYS:
            close = difflib.get_close_matches(str(key), EXPECTATION_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(EXPECTATION_KEYS)}"
            msg = f"{where}: unknown key {key!r} ({hint})"
            raise ConfigError(msg)
    bounds = {key: _bound(where, key, declared[key]) for key in ("min", "max") if key in declared}
    low, high = bounds.get("min"), bounds.get("max")
    not_null, on_fail = declared.get("not_null", False), declared.get("on_fail", "warn")
    allowed = _allowed(where, declared["allowed"]) if "allowed" in declared else None
    problem = None
    if bounds and not field.numeric:
        problem = "min/max need a numeric field (one with a numeric aggregation); use allowed for text"
    elif allowed is not None and field.numeric:
        problem = "allowed is for non-numeric fields (a numeric field takes min/max)"
    elif low is not None and high is not None and low > high:
        problem = f"min {number_text(low)} > max {number_text(high)}"
    elif not isinstance(not_null, bool):
        problem = f"not_null must be true or false, got {not_null!r}"
    elif on_fail not in ("warn", "dlq"):
        problem = f'on_fail must be "warn" or "dlq", got {on_fail!r}'
    elif not bounds and allowed is None and not not_null:
        problem = "declares no check (min, max, not_null = true or allowed)"
    if problem:
        msg = f"{where}: {problem}"
        raise ConfigError(msg)
    return FieldExpectation(
        field=field.name, min=low, max=high, not_null=not_null, allowed=allowed, on_fail=on_fail
    )


def _bound(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{where}: {key} must be a finite number, got {value!r}"
        raise ConfigError(msg)
    return float(value)


def _allowed(where: str, values: Any) -> tuple[str, ...]:
    """The allowed values in the form the batch frame holds a non-numeric field in."""
    if not isinstance(values, list) or not values:
        msg = f'{where}: allowed must be a non-empty list such as ["ok", "warn"], got {values!r}'
        raise ConfigError(msg)
    if any(v is None for v in values):
        msg = f"{where}: allowed cannot hold null (a null passes allowed; use not_null)"
        raise ConfigError(msg)
    return tuple(dict.fromkeys(v if isinstance(v, str) else canonical_json(v).decode() for v in values))


def number_text(value: float) -> str:
    """``60.0`` → ``"60"``, ``75.2`` → ``"75.2"``: thresholds and values as a user wrote them."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
