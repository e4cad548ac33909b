"""Property: fields a feature set does not use never change its rows (issue #16), whatever their
type and wherever they sit in the payload, through the decoder and the engine together."""

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

from headwater.stages.decode import DecodeLimits, decode_json_lines
from headwater.stages.features import EngineState, flush, process_batch

BASE = 1_700_000_000_000
LIMITS = DecodeLimits(now_ms=BASE + 10**9)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.text(max_size=12), st.integers(), st.floats(-1e6, 1e6))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def rows_of(lines: list[bytes]) -> list[tuple[Any, ...]]:
    frame, errors = decode_json_lines(lines, 1, LIMITS)
    assert errors == []
    spec = make_spec(TUMBLING)
    state, result = process_batch(EngineState(), frame, spec)
    _, last = flush(state, spec)
    rows = pl.concat([result.rows, last.rows])
    return sorted(
        (k, r["count"], r["sum"], r["min"], r["max"], r["std"]) for k, r in final_rows(rows).items()
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"), st.integers(0, 20_000), st.floats(-1e3, 1e3).map(lambda x: round(x, 3))
        ),
        min_size=1,
        max_size=40,
    ),
    st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda k: k != "value"), JSON_VALUES, max_size=4
        )
    ),
)
def test_unused_payload_fields_never_change_the_rows(
    events: list[tuple[str, int, float]], extras: list[dict[str, Any]]
) -> None:
    def lines(with_extras: bool) -> list[bytes]:
        out = []
        for i, (entity, t, value) in enumerate(events):
            extra = extras[i % len(extras)] if with_extras and extras else {}
            payload = {**extra, "value": value} if i % 2 else {"value": value, **extra}
            out.append(
                json.dumps(
                    {"entity_id": entity, "event_time": BASE + t, "sequence": i, "payload": payload}
                ).encode()
            )
        return out

    assert rows_of(lines(with_extras=True)) == rows_of(lines(with_extras=False))
