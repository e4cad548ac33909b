"""The signal pipeline end to end through real stores in a temp folder, against the reference."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "stages"))
from signal_reference import Ev, generate, run_reference

from headwater.adapters.parquet import ParquetOfflineStore
from headwater.adapters.sqlite_features import SQLiteFeatureStore
from headwater.featuresets import FeatureSetSpec, WindowSpec
from headwater.ops.features import export_rows
from headwater.pipeline.signals import SignalOptions, SignalPipeline
from headwater.testing import MemoryDeadLetters

NOW = 1_800_000_000_000
WINDOWS = [(1000, 1000), (5000, 5000), (60_000, 60_000)]


class FlakyOffline(ParquetOfflineStore):
    """Fails the first write of a given part: a crash between two batches."""

    def __init__(self, url: str, fail_part: str) -> None:
        super().__init__(url)
        self.fail_part: str | None = fail_part

    async def write(self, dataset: str, feature_set: str, part: str, rows: pl.DataFrame) -> None:
        if self.fail_part and part.endswith(self.fail_part):
            self.fail_part = None
            msg = "disk went away"
            raise OSError(msg)
        await super().write(dataset, feature_set, part, rows)


def write_jsonl(path: Path, events: list[Ev], bad: dict[int, str]) -> None:
    lines = []
    for i, e in enumerate(events):
        if i in bad:
            lines.append(bad[i])
        lines.append(
            json.dumps(
                {
                    "entity_id": e.entity_id,
                    "event_time": e.event_time,
                    "sequence": e.sequence,
                    "value": e.value,
                    "trace_id": f"t{i}",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


def spec(policy: str = "drop") -> FeatureSetSpec:
    return FeatureSetSpec(
        name="fs", windows=tuple(WindowSpec(size_ms=a, slide_ms=b) for a, b in WINDOWS), late_policy=policy
    )  # type: ignore[arg-type]


async def run(
    home: Path,
    inputs: Path,
    *,
    policy: str = "drop",
    offline: Any = None,
    dlq: MemoryDeadLetters | None = None,
    batch: int = 97,
) -> Any:
    online = SQLiteFeatureStore(f"sqlite:///{home}/features.db")
    await online.open()
    try:
        pipeline = SignalPipeline(
            inputs=inputs,
            spec=spec(policy),
            online=online,
            offline=offline or ParquetOfflineStore(str(home / "offline")),
            dead_letters=dlq,
            options=SignalOptions(batch_events=batch, checkpoint_interval_seconds=0),
            clock=lambda: NOW,
        )
        return await pipeline.run_async()
    finally:
        await online.close()


async def snapshot(home: Path) -> tuple[pl.DataFrame, list[tuple[Any, ...]]]:
    online = SQLiteFeatureStore(f"sqlite:///{home}/features.db")
    await online.open()
    try:
        rows = await online.dump_rows()
    finally:
        await online.close()
    return await export_rows(ParquetOfflineStore(str(home / "offline")), "fs"), rows


@pytest.fixture
def events_file(tmp_path: Path) -> tuple[Path, list[Ev]]:
    events = generate(seed=11, n=700)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(
        inputs / "events.jsonl",
        events,
        {5: '{"entity_id": "x"', 300: '{"entity_id":"a","event_time":1,"sequence":1,"value":"hot"}'},
    )
    return inputs, events


def test_backfill_matches_reference_and_dead_letters_bad_lines(tmp_path: Path, events_file: Any) -> None:
    inputs, events = events_file
    dlq = MemoryDeadLetters()
    final = asyncio.run(run(tmp_path / "home", inputs, dlq=dlq))
    ref = run_reference(events, WINDOWS, 2000)
    exported, _ = asyncio.run(snapshot(tmp_path / "home"))
    assert exported.height == len(ref.rows)
    for r in exported.iter_rows(named=True):
        want = ref.rows[(r["entity_id"], r["window_ms"], r["window_start_ms"])]
        assert r["value_count"] == want["count"]
        assert r["value_mean"] == pytest.approx(want["mean"], rel=1e-12)
        assert (r["value_std"] is None) == (want["std"] is None)
    assert final.events_seen == len(events) + 2
    assert final.events_invalid == 2
    assert final.duplicates == ref.duplicates
    assert final.late_dropped == len(ref.late)
    assert final.feature_rows_written == len(ref.rows)
    assert sorted(d.input_ref for d in dlq.letters) == ["events.jsonl:line 302", "events.jsonl:line 6"]
    assert "$.value" in dlq.letters[1].message or "$.value" in dlq.letters[0].message


def test_rerun_replaces_rows_and_never_duplicates(tmp_path: Path, events_file: Any) -> None:
    inputs, _ = events_file
    dlq = MemoryDeadLetters()
    home = tmp_path / "home"
    first = asyncio.run(run(home, inputs, dlq=dlq))
    before = asyncio.run(snapshot(home))
    second = asyncio.run(run(home, inputs, dlq=dlq))
    after = asyncio.run(snapshot(home))
    assert before[0].equals(after[0])
    assert before[1] == after[1]
    assert first.feature_rows_written == second.feature_rows_written
    raw = asyncio.run(ParquetOfflineStore(str(home / "offline")).read("windows", "fs"))
    assert raw.height == first.feature_rows_written  # same part names: replaced, not appended
    assert len(dlq.letters) == 2  # the outbox delivered each invalid record once


def test_resume_after_failure_equals_clean_run(tmp_path: Path, events_file: Any) -> None:
    inputs, _ = events_file
    clean = asyncio.run(run(tmp_path / "clean", inputs))
    home = tmp_path / "crashed"
    flaky = FlakyOffline(str(home / "offline"), fail_part="-000004")
    with pytest.raises(Exception, match="disk went away"):
        asyncio.run(run(home, inputs, offline=flaky))
    resumed = asyncio.run(run(home, inputs))
    assert resumed.resumed_from_batch == 4
    assert asyncio.run(snapshot(home))[1] == asyncio.run(snapshot(tmp_path / "clean"))[1]
    assert asyncio.run(snapshot(home))[0].equals(asyncio.run(snapshot(tmp_path / "clean"))[0])
    assert resumed.events_seen == clean.events_seen
    assert resumed.feature_rows_written == clean.feature_rows_written


def test_the_last_batch_carries_the_end_of_input(tmp_path: Path, events_file: Any) -> None:
    """702 lines in batches of 97 are 8 batches: the flush rides on the last one (one write fewer),
    and a failure of that last write resumes there and gives the clean run's rows."""
    inputs, _ = events_file
    clean = asyncio.run(run(tmp_path / "clean", inputs))
    assert clean.batches == 8
    home = tmp_path / "crashed"
    with pytest.raises(Exception, match="disk went away"):
        asyncio.run(run(home, inputs, offline=FlakyOffline(str(home / "offline"), fail_part="-000007")))
    resumed = asyncio.run(run(home, inputs))
    assert (resumed.resumed_from_batch, resumed.batches) == (7, 8)
    (offline, online), (offline_clean, online_clean) = (
        asyncio.run(snapshot(h)) for h in (home, tmp_path / "clean")
    )
    assert offline.equals(offline_clean) and online == online_clean
    assert resumed.feature_rows_written == clean.feature_rows_written


def test_an_empty_input_completes_with_one_empty_batch(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "none.jsonl").write_text("")
    final = asyncio.run(run(tmp_path / "home", inputs))
    assert (final.batches, final.events_seen, final.feature_rows_written) == (1, 0, 0)
    again = asyncio.run(run(tmp_path / "home", inputs))  # completed: a re-run starts over, the same
    assert (again.resumed_from_batch, again.batches) == (0, 1)


def test_parquet_input_and_correct_policy(tmp_path: Path) -> None:
    events = generate(seed=5, n=500)
    inputs = tmp_path / "in"
    inputs.mkdir()
    pl.DataFrame(
        {
            "entity_id": [e.entity_id for e in events],
            "event_time": [e.event_time for e in events],
            "sequence": [e.sequence for e in events],
            "value": [e.value for e in events],
        }
    ).write_parquet(inputs / "part-0.parquet")
    final = asyncio.run(run(tmp_path / "home", inputs, policy="correct", batch=64))
    ref = run_reference(events, WINDOWS, 2000, "correct")
    exported, _ = asyncio.run(snapshot(tmp_path / "home"))
    assert final.late_corrected > 0
    got = {(r["entity_id"], r["window_ms"], r["window_start_ms"]): r for r in exported.iter_rows(named=True)}
    assert set(got) == set(ref.rows)
    for key, want in ref.rows.items():
        assert got[key]["value_count"] == want["count"]
        assert got[key]["revision"] == want["revision"]


def test_a_backfill_traces_decode_dedup_windows_and_store_under_its_run_span(
    tmp_path: Path, events_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    monkeypatch.setenv("HEADWATER_OTEL", "1")
    inputs, events = events_file
    final = asyncio.run(run(tmp_path / "home", inputs, dlq=MemoryDeadLetters()))
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "headwater.signals.run"]
    assert root.attributes is not None and root.attributes["signals.events_seen"] == len(events) + 2
    by_id = {s.context.span_id: s for s in spans}

    def under_root(s: Any) -> bool:
        while s.parent is not None:
            s = by_id[s.parent.span_id]
        return s is root

    assert all(under_root(s) for s in spans)
    names = {s.name.removeprefix("headwater.signals.") for s in spans}
    assert names >= {"run", "decode", "batch", "dedup", "windows", "store"}
    decoded = sum(int((s.attributes or {}).get("records", 0)) for s in spans if s.name.endswith(".decode"))
    assert decoded == len(events)  # the two invalid lines are not in a chunk's frame
    stored = sum(int((s.attributes or {})["rows"]) for s in spans if s.name.endswith(".store"))
    assert stored == final.feature_rows_written
