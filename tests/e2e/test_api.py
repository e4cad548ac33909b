"""The HTTP API in-process (FastAPI's TestClient runs the app's lifespan, so jobs really run):
the auth matrix, jobs from submit to success, SSE replay with Last-Event-ID, pause/resume/cancel
during a real run, error statuses, probes and metrics, and canaries that must never leak."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from headwater import load_settings
from headwater.compose import build_document_pipeline
from headwater.config import Settings
from headwater.observability import configure_logging
from headwater.ops.index import status
from headwater.server import create_app

TOKEN = "hw-canary-token-5f1e2d"  # a canary: it must never show up in any output
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PII_EMAIL = "canary.person@example.com"
PII_PHONE = "+1 415 555 0199"
OPEN_ROUTES = {"/livez", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def make_settings(home: Path, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "home": home, "workers": 1, "api_token": TOKEN, "progress_interval_seconds": 0.05,
        "commit_batch_chunks": 1, "api_source_roots": [home.parent],
    }  # fmt: skip
    return load_settings(**{**base, **extra})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "home"))) as c:
        yield c


def sse(lines: Iterator[str], stop_after: int | None = None) -> list[dict[str, Any]]:
    """Parse an event stream into {id, event, data} dicts (pings and comments skipped)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line.strip():
            if "data" in current:
                events.append(current)
                if stop_after is not None and len(events) >= stop_after:
                    return events
            current = {}
            continue
        field, _, value = line.partition(":")
        if field:  # "": a comment line (ping)
            current[field] = json.loads(value.strip()) if field == "data" else value.strip()
    return events


def wait_for(client: TestClient, job_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never got there: {job}")


def clean_fingerprint(corpus: Path, home: Path) -> str:
    s = make_settings(home)
    asyncio.run(build_document_pipeline(s, str(corpus)).run_async())
    return str(asyncio.run(status(s))["fingerprint"])


def test_every_route_but_the_probes_needs_the_token(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        url = path.replace("{job_id}", "0" * 32).replace("{action}", "pause")
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = client.request(method, url, headers=headers, json={})
                if path in OPEN_ROUTES:
                    assert response.status_code != 401, (method, path)
                else:
                    assert response.status_code == 401, (method, path, headers, response.text)
                    checked += 1
    assert checked >= 3 * 8  # submit, list, get, delete, act, events, dlq list, dlq replay


def test_a_job_runs_and_its_event_stream_resumes_without_loss(
    client: TestClient, corpus: Path, tmp_path: Path
) -> None:
    job_id = client.post("/v1/jobs", json={"kind": "docs", "source": str(corpus)}, headers=AUTH).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        everything = sse(response.iter_lines())
    ids = [int(e["id"]) for e in everything]
    assert ids == list(range(1, len(ids) + 1))
    types = [e["event"] for e in everything]
    assert "RunStarted" in types
    assert "RunCompleted" in types
    assert everything[-1]["data"]["status"] == "succeeded"

    middle = len(everything) // 2
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": str(middle)}
    ) as response:
        rest = sse(response.iter_lines())
    assert rest == everything[middle:]

    job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert (job["status"], job["progress"]["completed"], job["runs"]) == ("succeeded", 6, 1)
    listed = client.get("/v1/jobs", params={"status": "succeeded"}, headers=AUTH).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert str(asyncio.run(status(make_settings(tmp_path / "home")))["fingerprint"]) == clean_fingerprint(
        corpus, tmp_path / "clean"
    )


def test_pause_resume_and_cancel_during_a_real_run(corpus: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", embedder="hash://?delay_ms=150")
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json={"source": str(corpus)}, headers=AUTH).json()["id"]
        wait_for(client, job_id, lambda j: j["progress"].get("completed", 0) >= 1)
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 409  # still running
        paused = client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH).json()
        assert paused["status"] in ("pausing", "paused")
        paused = wait_for(client, job_id, lambda j: j["status"] == "paused")
        done_before = paused["progress"]["completed"]
        assert 1 <= done_before < 6
        assert client.post(f"/v1/jobs/{job_id}:pause", headers=AUTH).status_code == 409

        assert client.post(f"/v1/jobs/{job_id}:resume", headers=AUTH).json()["status"] == "queued"
        finished = wait_for(client, job_id, lambda j: j["status"] in ("succeeded", "failed"))
        assert finished["status"] == "succeeded"
        assert finished["runs"] == 2
        # the second run skipped what the first finished and indexed only the rest
        assert finished["progress"]["skipped"] >= done_before
        assert finished["progress"]["completed"] == 6 - finished["progress"]["skipped"]

        other = tmp_path / "other"
        shutil.copytree(corpus, other)
        second = client.post("/v1/jobs", json={"source": str(other)}, headers=AUTH).json()["id"]
        wait_for(client, second, lambda j: j["status"] == "running")
        assert client.post(f"/v1/jobs/{second}:cancel", headers=AUTH).status_code == 200
        assert wait_for(client, second, lambda j: j["status"] == "cancelled")["reason"]
        refused = client.post(f"/v1/jobs/{second}:resume", headers=AUTH)
        assert refused.status_code == 409
        assert "cancelled" in refused.json()["detail"]
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 204
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
    assert str(asyncio.run(status(settings))["fingerprint"]) == clean_fingerprint(corpus, tmp_path / "clean")


def test_errors_have_specific_statuses(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/v1/jobs/nope", headers=AUTH).status_code == 404
    unknown = client.get(f"/v1/jobs/{'0' * 32}", headers=AUTH)
    assert (unknown.status_code, unknown.json()["detail"]) == (404, f"no job {'0' * 32!r}")
    missing = client.post("/v1/jobs", json={"source": str(tmp_path / "absent")}, headers=AUTH)
    assert missing.status_code == 422
    assert "does not exist" in missing.json()["detail"]
    assert client.post("/v1/jobs", json={"kind": "docs"}, headers=AUTH).status_code == 422
    outside = client.post("/v1/jobs", json={"source": "/"}, headers=AUTH)
    assert (outside.status_code, "outside" in outside.json()["detail"]) == (422, True)
    assert client.post("/v1/jobs", json={"source": "ftp://host/x"}, headers=AUTH).status_code == 422
    assert client.post("/v1/jobs", json={"kind": "spark", "source": "x"}, headers=AUTH).status_code == 422
    assert client.post("/v1/jobs", json={"source": "x", "extra": 1}, headers=AUTH).status_code == 422
    big = client.post("/v1/jobs", content=b"{" + b" " * 2_000_000 + b"}", headers=AUTH)
    assert big.status_code == 413
    assert client.get("/v1/jobs", params={"limit": 100_000}, headers=AUTH).status_code == 422
    job_id = client.post("/v1/jobs", json={"source": str(tmp_path)}, headers=AUTH).json()["id"]
    bad_resume = client.get(f"/v1/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": "abc"})
    assert bad_resume.status_code == 400
    assert client.post(f"/v1/jobs/{job_id}:explode", headers=AUTH).status_code == 422


def test_probes_readiness_and_metrics(corpus: Path, tmp_path: Path) -> None:
    down = make_settings(tmp_path / "down", bus=f"redis://:{TOKEN}@127.0.0.1:1/0")
    with TestClient(create_app(down)) as client:
        assert client.get("/livez").json() == {"status": "ok", "checks": {}}
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["jobs"] == "ok"
        assert ready.json()["checks"]["bus"] != "ok"
        assert TOKEN not in ready.text

    with TestClient(create_app(make_settings(tmp_path / "home"))) as client:
        assert client.get("/readyz").status_code == 200
        job_id = client.post("/v1/jobs", json={"source": str(corpus)}, headers=AUTH).json()["id"]
        wait_for(client, job_id, lambda j: j["status"] == "succeeded")
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    documents = sum(v for (name, _), v in samples.items() if name == "headwater_documents_total")
    assert documents >= 6
    assert samples[("headwater_jobs", (("status", "succeeded"),))] == 1


def test_canaries_never_leave_the_server(corpus: Path, tmp_path: Path) -> None:
    (corpus / "contact.md").write_text(f"# Contact\n\nWrite to {PII_EMAIL} or call {PII_PHONE}.\n")
    (corpus / "broken.pdf").write_text(f"not a pdf at all, but it mentions {PII_EMAIL} and {PII_PHONE}")
    logs = io.StringIO()
    configure_logging("debug", "json", stream=logs)
    settings = make_settings(tmp_path / "home", bus=f"redis://:{TOKEN}@127.0.0.1:1/0")
    outputs: list[str] = []
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json={"source": str(corpus)}, headers=AUTH).json()["id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH) as response:
            outputs.append("".join(response.iter_lines()))
        outputs.append(client.get(f"/v1/jobs/{job_id}", headers=AUTH).text)
        dlq = client.get("/v1/dlq", headers=AUTH)
        assert [e["input_ref"] for e in dlq.json()["entries"]] == ["broken.pdf"]
        outputs += [dlq.text, client.get("/metrics").text, client.get("/readyz").text]
    outputs.append(logs.getvalue())
    assert logs.getvalue().strip(), "the JSON logs are part of what is checked"
    for output in outputs:
        for canary in (TOKEN, PII_EMAIL, PII_PHONE):
            assert canary not in output
