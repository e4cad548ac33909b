"""Data-quality expectations: a decoded micro-batch checked against its feature set's declaration.

``check_expectations(frame, expectations, now_ms)`` is pure and column-wise: every check is one
Polars mask over the batch, all counted in one pass; Python touches rows only for events to
dead-letter (to name each one with its value). With nothing declared it returns the frame as it
came, untouched: a feature set without expectations pays one attribute test per batch.

The checks (``FieldExpectation``): ``min``/``max`` inclusive bounds of a numeric field,
``allowed`` values of any other field (compared in the text form the frame holds: a string as it
is, any other JSON value as compact JSON), ``not_null``. A null passes every check but
``not_null``. A ``dlq`` failure removes the event before dedup and windows and returns it as an
:class:`InvalidRecord` (field, then ``expectation max=60 failed: 75.2``); an event failing
several ``dlq`` checks is dead-lettered once, under the first in declaration order, and counted
under each. ``freshness`` is per batch: the newest event time against ``now_ms`` (None skips it:
backfills replay history).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import polars as pl

from headwater.events import ExpectationCount
from headwater.featuresets import Expectations, FieldExpectation, number_text
from headwater.stages.decode import InvalidRecord

REASON_PREFIX = "expectation "
"""Every dead-lettered event's reason starts with it (the DLQ names the stage from it)."""
_SHOWN_CHARS = 64


@dataclass(frozen=True, slots=True)
class Checked:
    """A batch after its expectations: the events kept, the failures counted per field and
    expectation (non-zero only), the events to dead-letter, and, when the batch was stale, how
    old its newest event was."""

    frame: pl.DataFrame
    failures: tuple[ExpectationCount, ...] = ()
    rejected: tuple[InvalidRecord, ...] = ()
    newest_event_age_ms: int | None = None

    @property
    def failed(self) -> int:
        return sum(f.count for f in self.failures)


@dataclass(frozen=True, slots=True)
class _Check:
    field: str
    expectation: str  # min | max | not_null | allowed
    label: str  # "max=60", as a reason shows it
    on_fail: str

    def failing(self, bound: float | tuple[str, ...] | None) -> pl.Expr:
        """True where the event fails; never null (a null value fails only ``not_null``)."""
        col = pl.col(self.field)
        if self.expectation == "not_null":
            return col.is_null()
        if self.expectation == "allowed":
            assert isinstance(bound, tuple)
            return (col.is_not_null() & ~col.is_in(list(bound))).fill_null(value=False)
        assert isinstance(bound, float)
        return (col < bound if self.expectation == "min" else col > bound).fill_null(value=False)


@lru_cache(maxsize=64)
def _checks(fields: tuple[FieldExpectation, ...]) -> tuple[tuple[_Check, pl.Expr], ...]:
    """Each declared check with its mask, in declaration order (built once per declaration)."""
    out: list[tuple[_Check, pl.Expr]] = []
    for f in fields:
        found: list[tuple[str, str, float | tuple[str, ...] | None]] = []
        if f.not_null:
            found.append(("not_null", "not_null", None))
        if f.min is not None:
            found.append(("min", f"min={number_text(f.min)}", f.min))
        if f.max is not None:
            found.append(("max", f"max={number_text(f.max)}", f.max))
        if f.allowed is not None:
            found.append(("allowed", _shown("allowed=" + repr(list(f.allowed))), f.allowed))
        for expectation, label, bound in found:
            check = _Check(f.field, expectation, label, f.on_fail)
            out.append((check, check.failing(bound)))
    return tuple(out)


def check_expectations(frame: pl.DataFrame, expectations: Expectations, now_ms: int | None) -> Checked:
    """The batch ``frame`` (decode's batch schema) checked; see the module docstring."""
    if not expectations:
        return Checked(frame)
    checks = _checks(expectations.fields)
    counts: tuple[int, ...] = ()
    if checks and frame.height:
        counts = frame.select(mask.sum().alias(f"_{i}") for i, (_, mask) in enumerate(checks)).row(0)
    failures = [
        ExpectationCount(field=c.field, expectation=c.expectation, on_fail=c.on_fail, count=int(n))
        for (c, _), n in zip(checks, counts, strict=False)
        if n
    ]
    age = _stale_by(frame, expectations.freshness_ms, now_ms)
    if age is not None:
        stale = ExpectationCount(field="event_time", expectation="freshness", on_fail="warn", count=1)
        failures.append(stale)
    dlq = [(c, mask) for (c, mask), n in zip(checks, counts, strict=False) if n and c.on_fail == "dlq"]
    if not dlq:
        return Checked(frame, tuple(failures), (), age)
    rejected = _rejected(frame, dlq)
    kept = frame.filter(~pl.any_horizontal([mask for _, mask in dlq]))
    return Checked(kept, tuple(failures), rejected, age)


def _stale_by(frame: pl.DataFrame, freshness_ms: int | None, now_ms: int | None) -> int | None:
    """How old the batch's newest event is, when older than ``freshness_ms`` (else None)."""
    if freshness_ms is None or now_ms is None or frame.height == 0:
        return None
    newest = frame["event_time"].max()
    if not isinstance(newest, int):
        return None
    age = now_ms - newest
    return age if age > freshness_ms else None


def _rejected(frame: pl.DataFrame, dlq: list[tuple[_Check, pl.Expr]]) -> tuple[InvalidRecord, ...]:
    """One record per failing event, under its first failing ``dlq`` check, in row order."""
    found: dict[int, InvalidRecord] = {}
    for check, mask in dlq:
        for row, value in frame.filter(mask).select("row", check.field).iter_rows():
            if row not in found:
                reason = f"{REASON_PREFIX}{check.label} failed: {_value_text(value)}"
                found[row] = InvalidRecord(row=row, field=check.field, reason=reason)
    return tuple(found[row] for row in sorted(found))


def _value_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return number_text(value)
    return _shown(repr(value))


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
