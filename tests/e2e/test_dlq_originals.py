"""Issue #13: the DLQ keeps the original input (only secrets removed) and replays it; what
operators read loses secrets only, never timestamps, numbers or hosts (CLI as a user runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.e2e.test_signals_cli import hw

BAD_TIME = (
    '{"entity_id":"pump-1","event_time":"2026-01-01 00:00:00","sequence":1,"value":4.0,'
    '"note":"from db.internal:5432 via 10.1.2.3:4222 at 12:30:45, ticket 5551234567"}'
)
BAD_WITH_SECRET = (
    '{"entity_id":"pump-1","event_time":"2026-01-01 00:00:02","sequence":3,"value":1.0,'
    '"password":"hunter2-canary","url":"nats://ops:pw-canary@10.1.2.3:4222/x?token=tok-canary"}'
)
GOOD = '{"entity_id":"pump-1","event_time":"2026-01-01T00:00:01Z","sequence":2,"value":2.0}'


def _letters(home: Path, *extra: str) -> list[dict[str, object]]:
    letters: list[dict[str, object]] = json.loads(
        hw("dlq", "list", "--home", str(home), "--json", *extra).stdout
    )
    return letters


def test_signal_letter_keeps_the_original_line_and_replays_it_once_fixed(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text('[feature_sets.pumps]\nwindows = ["1s"]\n')
    events = tmp_path / "events.jsonl"
    events.write_text(f"{BAD_TIME}\n{GOOD}\n{BAD_WITH_SECRET}\n")
    home = tmp_path / "hw"
    ingest = hw("ingest", "signals", str(events), "--home", str(home), "--feature-set", "pumps", cwd=tmp_path)
    letters = {str(lt["input_ref"]): lt for lt in _letters(home)}
    assert set(letters) == {"events.jsonl:line 1", "events.jsonl:line 3"}

    first = letters["events.jsonl:line 1"]
    shown = json.loads(hw("dlq", "show", str(first["id"]), "--home", str(home)).stdout)
    assert shown["payload"] == BAD_TIME  # the original line, verbatim: nothing became [PHONE] or [IP]
    assert "'2026-01-01 00:00:00'" in str(first["message"])
    listing = hw("dlq", "list", "--home", str(home)).stdout + ingest.stderr + ingest.stdout
    assert "2026-01-01 00:00:00" in listing
    assert "[PHONE]" not in listing and "[IP]" not in listing

    second = json.loads(
        hw("dlq", "show", str(letters["events.jsonl:line 3"]["id"]), "--home", str(home)).stdout
    )
    for canary in ("hunter2-canary", "pw-canary", "tok-canary"):
        assert canary not in json.dumps(second)
    assert "2026-01-01 00:00:02" in second["payload"] and "10.1.2.3:4222" in second["payload"]

    # Fix the record in its file (README: fix it, then `dlq replay ID`): the event is ingested.
    events.write_text(
        f"{BAD_TIME.replace('2026-01-01 00:00:00', '2026-01-01T00:00:00Z')}\n{GOOD}\n{BAD_WITH_SECRET}\n"
    )
    hw("dlq", "replay", str(first["id"]), "--home", str(home), cwd=tmp_path)
    still_open = {str(lt["input_ref"]) for lt in _letters(home)}
    assert still_open == {"events.jsonl:line 3"}  # the unfixed one stays open, once
    replayed = [lt for lt in _letters(home, "--all") if lt["replayed_at"]]
    assert [lt["id"] for lt in replayed] == [first["id"]]

    out = tmp_path / "rows.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "pumps", "--out", str(out), cwd=tmp_path)
    rows = pl.read_parquet(out).sort("window_start_ms")
    starts = rows["window_start_ms"].to_list()
    assert 1_767_225_600_000 in starts  # the window of the replayed 00:00:00 event
    assert rows.filter(pl.col("window_start_ms") == 1_767_225_600_000)["value_sum"].to_list() == [4.0]
    assert rows.filter(pl.col("window_start_ms") == 1_767_225_601_000)["value_count"].to_list() == [
        1
    ]  # not doubled
