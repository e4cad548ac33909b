"""A stream worker started with ``--metrics-port`` serves Prometheus metrics while it runs: the
message counters match what was published and the consumer lag gauge is reported (real Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SAMPLES, Cli
from tests.servers.processes import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_signal_worker_serves_its_metrics(cli: Cli, tmp_path: Path, redis_server: Any) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}"
    events = tmp_path / "events.jsonl"
    lines = (SAMPLES / "signals" / "events.jsonl").read_text().splitlines()[:500]
    events.write_text("\n".join([*lines, "{not json"]) + "\n")
    cli("publish", "signals", str(events), "--bus", redis_server.url, "--topic", topic)
    port = free_port()
    args = ["worker", "signals", "--bus", redis_server.url, "--topic", topic, "--home", str(tmp_path / "h"),
            "--feature-set", "sensors", "--metrics-port", str(port), "--exit-when-idle", "5",
            "--json"]  # fmt: skip
    with (tmp_path / "worker.out").open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "headwater.cli", *args], stdout=out, env=cli.env)
        try:
            deadline, samples = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                try:
                    samples = scrape(port)
                except httpx.TransportError:
                    samples = {}
                acked = total(samples, "headwater_messages_total", outcome="acked")
                if acked + total(samples, "headwater_messages_total", outcome="dead_lettered") >= 501:
                    break
                time.sleep(0.1)
        finally:
            assert worker.wait(60) == 0
    assert total(samples, "headwater_messages_total", outcome="acked") == 500
    assert total(samples, "headwater_messages_total", outcome="dead_lettered") == 1
    assert total(samples, "headwater_errors_total") >= 1
    assert any(name == "headwater_consumer_lag_messages" for name, _ in samples)
    out = [json.loads(line) for line in (tmp_path / "worker.out").read_text().splitlines()]
    assert any(b.get("lag") is not None for b in out if b["type"] == "WorkerBatch")
    # the sample events are old: every closed window is stale by far more than a day
    fresh = [e["feature_latency_seconds"] for e in out if e["type"] == "WindowsClosed" and e["rows"]]
    assert fresh and all(set(f) <= {"1s", "5s", "1m"} and min(f.values()) > 86_400 for f in fresh)
    # scraped before the idle flush at exit closed the last windows: some, not all, were observed
    assert 1 <= total(samples, "headwater_feature_latency_seconds_count") <= sum(len(f) for f in fresh)
