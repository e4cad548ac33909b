"""``--late-policy hold`` then ``features late`` / ``features release``, as a user runs them (subprocesses).

After a release the exported rows equal a run where nothing was late (aggregates) and a run under
``correct`` (aggregates and revisions); a second release changes nothing; a release killed
(SIGKILL) between its steps, run again, ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from polars.testing import assert_frame_equal

from headwater.config import load_settings
from headwater.server import create_app

ROOT = Path(__file__).resolve().parents[2]
KEY = ["entity_id", "feature_set", "version", "window_ms", "window_start_ms"]
AGGREGATES = ["value_count", "value_sum", "value_mean", "value_min", "value_max", "value_std"]
WINDOWS = "1s,5s,10s/5s"


def hw(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    full.pop("HEADWATER_HOME", None)
    if env is None:
        full.pop("HEADWATER_CRASH_AT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def write_events(path: Path, n: int = 2500, seed: int = 16) -> None:
    """Four entities, about 6% of events 2.5 to 9 s late (lateness 2 s), a few duplicates."""
    rng = random.Random(seed)
    t, lines = 1_700_000_000_000, []
    for i in range(n):
        t += rng.randint(0, 40)
        late = rng.randint(2500, 9000) if rng.random() < 0.06 else 0
        event = {"entity_id": f"e{rng.randint(0, 3)}", "event_time": t - late, "sequence": i}
        lines.append({**event, "value": round(rng.gauss(10, 3), 3)})
        if rng.random() < 0.01:
            lines.append(dict(lines[-1]))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def ingest(home: Path, events: Path, *flags: str) -> dict[str, Any]:
    proc = hw("ingest", "signals", str(events), "--home", str(home), "--feature-set", "sensors",
              "--windows", WINDOWS, "--json", *flags)  # fmt: skip
    final: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    assert final["type"] == "RunCompleted"
    return final


def export(home: Path, tmp: Path, dataset: str = "windows") -> pl.DataFrame:
    out = tmp / f"{home.name}-{dataset}.parquet"
    hw("features", "export", "--home", str(home), "--feature-set", "sensors", "--out", str(out),
       "--dataset", dataset)  # fmt: skip
    return pl.read_parquet(out).sort(KEY)


def late_json(home: Path, *flags: str) -> dict[str, Any]:
    proc = hw("features", "late", "--home", str(home), "--feature-set", "sensors", "--json", *flags)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def release(
    home: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return hw("features", "release", "--home", str(home), "--feature-set", "sensors", "--json", env=env,
              check=check)  # fmt: skip


def online_rows(home: Path) -> pl.DataFrame:
    with sqlite3.connect(home / "features.db") as conn:
        cursor = conn.execute("SELECT * FROM feature_rows")
        names = [d[0] for d in cursor.description]
        rows = pl.DataFrame(cursor.fetchall(), schema=names, orient="row")
    features = pl.DataFrame([json.loads(f) for f in rows["features"]])
    return pl.concat([rows.drop("features"), features], how="horizontal").sort(KEY)


def assert_aggregates_equal(got: pl.DataFrame, want: pl.DataFrame, *, revision: bool = False) -> None:
    columns = [*KEY, *AGGREGATES, *(["revision"] if revision else [])]
    assert_frame_equal(got.select(columns), want.select(columns), check_exact=False, rel_tol=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hold")
    events = tmp / "events.jsonl"
    write_events(events)
    held = ingest(tmp / "hold", events, "--lateness", "2s", "--late-policy", "hold")
    ingest(tmp / "ontime", events, "--lateness", "1h", "--late-policy", "drop")
    ingest(tmp / "correct", events, "--lateness", "2s", "--late-policy", "correct")
    return {"tmp": tmp, "events": events, "held": held, "held_events": late_json(tmp / "hold")["held_events"]}


def test_hold_release_equals_correct_and_a_run_without_late_events(runs: dict[str, Any]) -> None:
    tmp, home = runs["tmp"], runs["tmp"] / "hold"
    before = export(home, tmp)
    ontime, corrected = export(tmp / "ontime", tmp), export(tmp / "correct", tmp)
    assert runs["held"]["late_dropped"] > 0
    assert before.height < ontime.height  # held events are not applied by the run itself

    shown = late_json(home, "--limit", "100000")
    assert shown["held_rows"] == runs["held"]["late_dropped"]  # one row per (event, window missed)
    assert 0 < shown["held_events"] <= shown["held_rows"]
    assert shown["oldest"]["event_time"] == min(e["event_time"] for e in shown["events"])
    assert shown["released_events"] == 0
    gauges = hw("features", "late", "--home", str(home), "--feature-set", "sensors", "--prometheus").stdout
    assert f'headwater_signal_held_events{{feature_set="sensors"}} {float(shown["held_events"])}' in gauges
    assert "headwater_documents_total" not in gauges  # only the held gauges: a textfile collector's file

    with TestClient(
        create_app(load_settings(home=home, feature_set="sensors", late_policy="hold"))
    ) as client:
        scraped = client.get("/metrics").text  # the server's /metrics has the same gauge
    assert f'headwater_signal_held_events{{feature_set="sensors"}} {float(shown["held_events"])}' in scraped

    done = json.loads(release(home).stdout)
    assert done["release"] == 1 and done["events_released"] == shown["held_events"]
    after = export(home, tmp)
    assert_aggregates_equal(after, ontime)
    assert_aggregates_equal(after, corrected, revision=True)
    # The online store serves the revised rows.
    online = online_rows(home)
    served = after.join(online, on=KEY, how="semi")
    assert_aggregates_equal(online.join(after.select(KEY), on=KEY, how="semi"), served, revision=True)
    revised = after.join(before.select(*KEY, pl.col("revision").alias("before")), on=KEY, how="left")
    moved = revised.filter(pl.col("before").is_not_null() & (pl.col("revision") > pl.col("before")))
    assert moved.height > 0
    assert online.join(moved.select(KEY), on=KEY, how="semi").height == moved.height

    cleared = late_json(home)
    assert (cleared["held_events"], cleared["oldest"], cleared["released_events"]) == (
        0, None, shown["held_events"])  # fmt: skip
    again = json.loads(release(home).stdout)
    assert again == {**again, "release": 0, "events_released": 0, "windows_revised": 0}
    assert export(home, tmp).equals(after)
    assert online_rows(home).equals(online)
    plain = hw("features", "release", "--home", str(home), "--feature-set", "sensors").stdout
    assert "nothing held" in plain


@pytest.mark.parametrize("crash_at", ["release_after_windows", "release_after_online"])
def test_a_release_killed_between_its_steps_converges(runs: dict[str, Any], crash_at: str) -> None:
    tmp = runs["tmp"]
    home = tmp / f"crash-{crash_at}"
    ingest(home, runs["events"], "--lateness", "2s", "--late-policy", "hold")
    held = late_json(home)["held_events"]
    killed = release(home, env={"HEADWATER_CRASH_AT": crash_at}, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert late_json(home)["held_events"] == held  # not marked: still held, nothing lost
    done = json.loads(release(home).stdout)
    assert (done["release"], done["events_released"]) == (1, held)
    after = export(home, tmp)
    assert_aggregates_equal(after, export(tmp / "correct", tmp), revision=True)
    assert_aggregates_equal(after, export(tmp / "ontime", tmp))
    assert json.loads(release(home).stdout)["events_released"] == 0
    assert export(home, tmp).equals(after)


def test_release_of_a_home_without_held_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_events(events, n=300)
    home = tmp_path / "drop"
    ingest(home, events, "--lateness", "2s", "--late-policy", "drop")  # late rows, but dropped
    assert late_json(home)["held_events"] == 0
    assert json.loads(release(home).stdout)["events_released"] == 0
    missing = hw("features", "release", "--home", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_events_held_by_a_stream_worker_are_released_too(
    runs: dict[str, Any], redis_server: Any, tmp_path: Path
) -> None:
    """The bus worker writes held events to the same ``late`` dataset: a release applies them."""
    home, topic = tmp_path / "stream", f"t{random.Random().getrandbits(40):x}"
    hw("publish", "signals", str(runs["events"]), "--bus", redis_server.url, "--topic", topic)
    hw("worker", "signals", "--bus", redis_server.url, "--topic", topic, "--home", str(home),
       "--feature-set", "sensors", "--windows", WINDOWS, "--lateness", "2s", "--late-policy", "hold",
       "--exit-when-idle", "2", env={"HEADWATER_ACK_WAIT_SECONDS": "2"})  # fmt: skip
    held = late_json(home)["held_events"]
    assert held == runs["held_events"] > 0
    assert json.loads(release(home).stdout)["events_released"] == held
    assert_aggregates_equal(export(home, tmp_path), export(runs["tmp"] / "ontime", tmp_path))


def test_a_release_under_another_declaration_is_one_clear_line(tmp_path: Path) -> None:
    """Held under flags (``--features``), released with no declaration: refused, never a traceback."""
    home = tmp_path / "hw"
    samples = ROOT / "samples" / "signals"
    flags = ("--late-policy", "hold", "--features", "rpm:mean,max")
    hw("ingest", "signals", str(samples), "--home", str(home), *flags)
    proc = hw("features", "release", "--home", str(home), check=False)
    assert proc.returncode == 3, proc.stderr
    assert "computed for the fields rpm" in proc.stderr and "[feature_sets.default]" in proc.stderr
    assert "Traceback" not in proc.stderr
