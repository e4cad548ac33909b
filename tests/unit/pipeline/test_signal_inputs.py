"""How signal files are cut into micro-batches: every ``size`` records, the last batch of a file
taking a rest of at most ``tail_allowance(size)`` records; the same cuts for every format, and
the same cuts again from any checkpointed position."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.pipeline.signal_inputs import (
    _cut,
    list_inputs,
    read_chunks,
    read_slice,
    tail_allowance,
)
from headwater.stages.decode import DecodeLimits

LIMITS = DecodeLimits(now_ms=2_000_000_000_000)


@given(n=st.integers(0, 300), size=st.integers(1, 64), tail=st.integers(0, 40))
def test_cuts_cover_the_records_and_leave_no_small_last_batch(n: int, size: int, tail: int) -> None:
    batches = list(_cut(iter(range(n)), size, tail))
    assert [r for batch in batches for r in batch] == list(range(n))
    assert all(len(b) == size for b in batches[:-1])
    if batches:
        last = len(batches[-1])
        assert 0 < last <= size + tail
        assert len(batches) == 1 or last > tail  # a rest of at most `tail` rode with the batch before it
        expected = 1 if n <= size + tail else (n - tail - 1) // size + 1
        assert len(batches) == expected


def _events(n: int) -> list[dict[str, object]]:
    return [
        {"entity_id": f"e{i % 3}", "event_time": 1_700_000_000_000 + 10 * i, "sequence": i, "value": i / 4}
        for i in range(n)
    ]


def _write(folder: Path, kind: str, n: int) -> Path:
    folder.mkdir()
    rows = _events(n)
    if kind == "jsonl":
        lines = [
            {**{k: r[k] for k in ("entity_id", "event_time", "sequence")}, "payload": {"value": r["value"]}}
            for r in rows
        ]
        (folder / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    elif kind == "csv":
        body = "".join(f"{r['entity_id']},{r['event_time']},{r['sequence']},{r['value']}\n" for r in rows)
        (folder / "a.csv").write_text("entity_id,event_time,sequence,value\n" + body)
    else:
        pq.write_table(pa.Table.from_pylist(rows), folder / "a.parquet", row_group_size=7)
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize(
    ("n", "cuts"),
    [
        (100, [(0, 32), (32, 32), (64, 36)]),  # a rest of 4 (the allowance) rides along
        (101, [(0, 32), (32, 32), (64, 32), (96, 5)]),  # a rest of 5 is a batch of its own
        (36, [(0, 36)]),
        (32, [(0, 32)]),
        (0, []),
    ],
)
def test_every_format_is_cut_alike_and_resumes_at_its_cuts(
    tmp_path: Path, kind: str, n: int, cuts: list[tuple[int, int]]
) -> None:
    assert tail_allowance(32) == 4
    files = list_inputs(_write(tmp_path / "in", kind, n))
    chunks = list(read_chunks(files, 0, 0, 32, LIMITS))
    assert [(c.start, c.consumed) for c in chunks] == cuts
    assert sum(c.frame.height for c in chunks) == n and not any(c.errors for c in chunks)
    for i, (start, _) in enumerate(cuts):  # a run resumed at a checkpoint replays the same batches
        resumed = list(read_chunks(files, 0, start, 32, LIMITS))
        assert [(c.start, c.consumed) for c in resumed] == cuts[i:]
        assert all(a.frame.equals(b.frame) for a, b in zip(resumed, chunks[i:], strict=True))


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_slice_ends_where_it_says(tmp_path: Path, kind: str) -> None:
    """A parallel engine plans its own slices: the last full one must not take the rest too."""
    files = list_inputs(_write(tmp_path / "in", kind, 100))
    last_full = read_slice(files[0], 0, 64, 32, LIMITS)
    rest = read_slice(files[0], 0, 96, 32, LIMITS)
    assert (last_full.consumed, last_full.frame.height) == (32, 32)
    assert (rest.consumed, rest.frame["sequence"].to_list()) == (4, [96, 97, 98, 99])
