import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from headwater import observability
from headwater.events import (
    BatchProgress,
    ChangesPublished,
    DocumentCompleted,
    DocumentDeleted,
    DocumentFailed,
    DocumentSkipped,
    Event,
    ExpectationCount,
    ExpectationsFailed,
    MessageDeadLettered,
    RunCompleted,
    RunStarted,
    SignalRejected,
    SignalRunCompleted,
    WindowsClosed,
    WorkerBatch,
    WorkerStopped,
    to_dict,
)
from headwater.observability import Metrics, configure_logging, get_logger, redact, register_secret, span

CANARY_SECRET = "sk-CANARY-123456"
PLAIN_SECRET = "hw-tok-Zx9Qm2Lp"  # matches no pattern: only the registry can catch it
CANARY_EMAIL = "canary.person@example.com"
CANARY_PHONE = "+44 20 7946 0958"
CANARIES = (CANARY_SECRET, PLAIN_SECRET, "hunter2")  # secrets: never in any output
# Not secrets: logs keep them as they are (PII scrubbing is for content, and only when asked).
KEPT = (
    CANARY_EMAIL,
    CANARY_PHONE,
    "2026-01-01 00:00:00",
    "12:30:45",
    "5551234567",
    "db.internal:5432",
    "10.1.2.3:4222",
)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if not s.name.endswith("_created")  # creation timestamps differ between instances
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def run_events() -> list[Event]:
    """A documents run, a signal run and a stream worker, as their pipelines emit them."""
    return [
        RunStarted(run_id="r1", kind="docs", source="file:///corpus"),
        DocumentCompleted(doc_id="d1", uri="a.md", outcome="added", chunks=5, chunks_embedded=5,
                          chunks_deleted=0),
        DocumentCompleted(doc_id="d2", uri="b.md", outcome="updated", chunks=4, chunks_embedded=1,
                          chunks_deleted=2),
        DocumentSkipped(doc_id="d3", uri="c.md", reason="unchanged"),
        DocumentSkipped(doc_id="d4", uri="d.bin", reason="something-new"),
        DocumentFailed(doc_id="d5", uri="e.pdf", stage="extract", error_type="InputError", message="bad",
                       attempts=1, dlq_id=1),
        DocumentFailed(doc_id="d6", uri="f.pdf", stage="embed", error_type="VendorQuirkError",
                       message="x", attempts=3, dlq_id=2),
        DocumentDeleted(doc_id="d7", uri="g.md", chunks_deleted=3),
        BatchProgress(completed=2, failed=2, skipped=2, in_flight=7, estimated_total=None,
                      eta_seconds=None, elapsed_seconds=1.0),
        RunCompleted(documents_seen=7, elapsed_seconds=2.5),
        SignalRejected(input_ref="s.jsonl:3", field="ts", reason="missing"),
        SignalRejected(input_ref="s.jsonl:4", field="temp", reason="expectation max=60 failed: 75.2"),
        ExpectationsFailed(feature_set="clicks", batch=0, dead_lettered=1, failures=[
            ExpectationCount(field="temp", expectation="max", on_fail="dlq", count=3),
            ExpectationCount(field="bad label!", expectation="surprise", on_fail="warn", count=2),
        ]),
        WindowsClosed(batch=1, rows=10, points=100, late=4, watermark_ms=1_000),
        SignalRunCompleted(feature_set="clicks", duplicates=6, late_dropped=2, elapsed_seconds=4.0),
        ChangesPublished(source="file:///corpus", added=3, updated=1, deleted=0, unchanged=9),
        MessageDeadLettered(topic="docs", position="7", deliveries=3, error_type="PermanentError",
                            message="no", dlq_id=3),
        WorkerBatch(topic="docs", messages=10, acked=9, dead_lettered=1, already_done=2, lag=42),
        WorkerStopped(topic="docs", reason="idle", batches=1, messages_acked=9,
                      messages_dead_lettered=1, elapsed_seconds=3.0),
    ]  # fmt: skip


EXPECTED = {
    ("headwater_documents_total", ("commit", "added")): 1,
    ("headwater_documents_total", ("commit", "updated")): 1,
    ("headwater_documents_total", ("commit", "deleted")): 1,
    ("headwater_documents_total", ("diff", "unchanged")): 1,
    ("headwater_documents_total", ("diff", "other")): 1,
    ("headwater_documents_total", ("extract", "failed")): 1,
    ("headwater_documents_total", ("embed", "failed")): 1,
    ("headwater_documents_total", ("watch", "added")): 3,
    ("headwater_documents_total", ("watch", "unchanged")): 9,
    ("headwater_chunks_total", ("embedded",)): 6,
    ("headwater_chunks_total", ("reused",)): 3,
    ("headwater_chunks_total", ("deleted",)): 5,
    ("headwater_errors_total", ("extract", "InputError")): 1,
    ("headwater_errors_total", ("embed", "other")): 1,
    ("headwater_errors_total", ("decode", "InputError")): 1,
    ("headwater_errors_total", ("worker", "PermanentError")): 1,
    ("headwater_signals_total", ("decode", "rejected")): 1,
    ("headwater_signals_total", ("expectations", "rejected")): 1,
    ("headwater_errors_total", ("expectations", "InputError")): 1,
    ("headwater_expectation_failures_total", ("clicks", "temp", "max")): 3,
    ("headwater_expectation_failures_total", ("clicks", "other", "other")): 2,
    ("headwater_signals_total", ("windows", "accepted")): 100,
    ("headwater_signals_total", ("windows", "late")): 4,
    ("headwater_signals_total", ("features", "rows_written")): 10,
    ("headwater_signals_total", ("decode", "duplicate")): 6,
    ("headwater_signals_total", ("windows", "late_dropped")): 2,
    ("headwater_messages_total", ("docs", "acked")): 9,
    ("headwater_messages_total", ("docs", "already_done")): 2,
    ("headwater_queue_depth", ("documents_in_flight",)): 7,
    ("headwater_consumer_lag_messages", ("docs",)): 42,
    ("headwater_job_events_total", ("RunCompleted",)): 2,
    ("headwater_job_events_total", ("DocumentCompleted",)): 2,
    ("headwater_stage_duration_seconds_sum", ("run_documents",)): 2.5,
    ("headwater_stage_duration_seconds_sum", ("run_signals",)): 4.0,
    ("headwater_stage_duration_seconds_count", ("worker",)): 1,
}
LABEL_NAMES = {
    "headwater_documents_total": ("stage", "outcome"),
    "headwater_signals_total": ("stage", "outcome"),
    "headwater_errors_total": ("stage", "reason"),
    "headwater_messages_total": ("topic_kind", "outcome"),
    "headwater_chunks_total": ("outcome",),
    "headwater_queue_depth": ("queue",),
    "headwater_consumer_lag_messages": ("topic_kind",),
    "headwater_job_events_total": ("type",),
    "headwater_expectation_failures_total": ("feature_set", "field", "expectation"),
    "headwater_stage_duration_seconds_sum": ("stage",),
    "headwater_stage_duration_seconds_count": ("stage",),
}


def assert_expected(metrics: Metrics) -> None:
    for (name, label_values), expected in EXPECTED.items():
        labels = dict(zip(LABEL_NAMES[name], label_values, strict=True))
        assert value(metrics, name, **labels) == expected, (name, labels)


def test_a_run_of_events_becomes_exact_counts() -> None:
    metrics = Metrics()
    for event in run_events():
        metrics.observe(event)
    assert_expected(metrics)


def test_the_journal_dict_form_counts_the_same() -> None:
    from_events, from_dicts = Metrics(), Metrics()
    for event in run_events():
        from_events.observe(event)
        from_dicts.observe(to_dict(event))
    assert_expected(from_dicts)
    assert samples(from_dicts) == samples(from_events)


def test_unknown_or_malformed_events_only_count_as_events() -> None:
    metrics = Metrics()
    before = samples(metrics)
    metrics.observe({"type": "SomethingNew", "doc_id": "x"})
    metrics.observe({"type": "DocumentCompleted", "chunks": "many"})  # malformed, still no crash
    assert value(metrics, "headwater_job_events_total", type="other") == 1
    assert value(metrics, "headwater_job_events_total", type="DocumentCompleted") == 1
    assert value(metrics, "headwater_chunks_total", outcome="embedded") == 0
    assert len(samples(metrics)) > len(before)


def completed(i: int, outcome: str = "added") -> DocumentCompleted:
    return DocumentCompleted(
        doc_id=f"doc-{i}", uri=f"s3://bucket/{i}/file-{i}.md?v={i}", outcome=outcome, chunks=3,
        chunks_embedded=2, chunks_deleted=1,
    )  # fmt: skip


def failed(i: int) -> DocumentFailed:
    return DocumentFailed(
        doc_id=f"doc-{i}", uri=f"/x/{i}", stage=f"stage-{i % 50}", error_type=f"Error{i}",
        message=str(i), attempts=1, dlq_id=i,
    )  # fmt: skip


def test_series_stay_bounded_whatever_the_ids() -> None:
    metrics = Metrics()
    for i in range(10):
        metrics.observe(completed(i))
    series = len(samples(metrics))
    for i in range(10_000):
        metrics.observe(completed(i, "added" if i % 2 else "updated"))
        metrics.observe(failed(i))
    body = metrics.render()[0].decode()
    assert "doc-9999" not in body and "s3://" not in body and "Error9999" not in body
    assert len(samples(metrics)) == series + 1 + 2 + 1  # updated; failed + error in stage "other"; event type


def test_setters_and_gauges() -> None:
    metrics = Metrics()
    metrics.set_queue_depth("embed", 12)
    metrics.set_queue_depth("/etc/passwd", 3)
    metrics.set_dlq_size(5)
    metrics.set_rate_limit(8.5)
    metrics.set_consumer_lag("signals", 30)
    metrics.set_consumer_lag("my-private-topic", 1)
    metrics.set_jobs({"running": 2, "queued": 1})
    metrics.set_jobs({"running": 1})
    metrics.observe_feature_latency("5m", 0.2)
    metrics.observe_feature_latency("window-of-doc-123", 0.2)
    assert value(metrics, "headwater_queue_depth", queue="embed") == 12
    assert value(metrics, "headwater_queue_depth", queue="other") == 3
    assert value(metrics, "headwater_dlq_size") == 5
    assert value(metrics, "headwater_embed_rate_limit_requests_per_second") == 8.5
    assert value(metrics, "headwater_consumer_lag_messages", topic_kind="signals") == 30
    assert value(metrics, "headwater_consumer_lag_messages", topic_kind="other") == 1
    assert value(metrics, "headwater_jobs", status="running") == 1
    assert value(metrics, "headwater_jobs", status="queued") == 0  # not kept stale
    assert value(metrics, "headwater_feature_latency_seconds_count", window="5m") == 1
    assert value(metrics, "headwater_feature_latency_seconds_count", window="other") == 1


def test_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.set_dlq_size(3)
    assert value(a, "headwater_dlq_size") == 3
    assert value(b, "headwater_dlq_size") == 0


# --- redaction and logging -------------------------------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_secrets", ())
    register_secret(CANARY_SECRET)
    register_secret(PLAIN_SECRET)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)  # idempotent: still one handler, one line per call
    yield out
    structlog.contextvars.clear_contextvars()
    for handler in [h for h in logging.getLogger().handlers if isinstance(h, observability._Handler)]:
        logging.getLogger().removeHandler(handler)
    structlog.reset_defaults()


def leaky_payload() -> dict[str, object]:
    return {
        "type": "DocumentFailed",
        "doc_id": "d1",
        "message": f"POST https://user:{CANARY_SECRET}@api.example.com/v1?api_key={CANARY_SECRET}&n=1 "
        f"failed for {CANARY_EMAIL}, call {CANARY_PHONE}; token {PLAIN_SECRET}; at 2026-01-01 00:00:00 "
        "(12:30:45) value 5551234567 via db.internal:5432 and 10.1.2.3:4222",
        "api_key": CANARY_SECRET,
        "headers": [{"Authorization": f"Bearer {PLAIN_SECRET}"}, f"Authorization: Bearer {CANARY_SECRET}"],
        "config": "password=hunter2",
        "chunks": 3,
        "max_tokens": 512,
    }


def test_redact_removes_secrets_only_and_keeps_shape(secrets: None) -> None:
    clean = redact(leaky_payload())
    text = json.dumps(clean)
    for canary in CANARIES:
        assert canary not in text
    for kept in KEPT:
        assert kept in str(clean["message"])
    assert clean["type"] == "DocumentFailed" and clean["doc_id"] == "d1"
    assert clean["chunks"] == 3 and clean["max_tokens"] == 512
    assert clean["api_key"] == "***"
    assert "https://***@api.example.com/v1?api_key=***&n=1" in str(clean["message"])
    assert "[" not in str(clean["message"])  # no [PHONE], [IP], [EMAIL] placeholders
    assert redact(f"Bearer {CANARY_SECRET}") == "Bearer ***"
    assert redact([PLAIN_SECRET, 1]) == ["***", 1]


def test_log_lines_are_json_with_correlation_ids_and_nothing_secret(
    secrets: None, log_output: io.StringIO
) -> None:
    structlog.contextvars.bind_contextvars(job_id="job-1", doc_id="doc-1", trace_id="trace-1")
    log = get_logger("headwater.test")
    payload = {k: v for k, v in leaky_payload().items() if k != "doc_id"}
    log.info(f"calling {CANARY_EMAIL} with {CANARY_SECRET}", **payload)
    log.warning("retry", url=f"https://api.example.com/?token={PLAIN_SECRET}", who=CANARY_PHONE)
    try:
        raise RuntimeError(f"password=hunter2 {CANARY_SECRET}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("uvicorn.error").error("stdlib %s %s", CANARY_EMAIL, PLAIN_SECRET)

    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert len(lines) == 4
    for canary in CANARIES:
        assert canary not in log_output.getvalue()
    for kept in KEPT:
        assert kept in lines[0]["message"]
    assert lines[1]["who"] == CANARY_PHONE
    for line in lines:
        assert (line["job_id"], line["doc_id"], line["trace_id"]) == ("job-1", "doc-1", "trace-1")
        assert {"timestamp", "level", "logger", "event"} <= set(line)
    assert lines[0]["logger"] == "headwater.test" and lines[0]["level"] == "info"
    assert lines[2]["level"] == "error" and "RuntimeError" in lines[2]["exception"]
    assert lines[3]["logger"] == "uvicorn.error"


def test_log_level_filters(log_output: io.StringIO) -> None:
    configure_logging("warning", "json", stream=log_output)
    get_logger("x").info("quiet")
    get_logger("x").warning("loud")
    assert [json.loads(line)["event"] for line in log_output.getvalue().splitlines()] == ["loud"]


def test_span_is_a_no_op_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_OTEL", raising=False)
    with span("ingest", job="j1") as current:
        assert current is None
    pytest.importorskip("opentelemetry")
    monkeypatch.setenv("HEADWATER_OTEL", "1")
    with span("ingest", job="j1") as current:  # no SDK provider set here: the API's default span
        assert current is not None and hasattr(current, "is_recording")


def test_progress_reports_queue_depths_and_the_embed_rate() -> None:
    metrics = Metrics()
    metrics.observe(
        BatchProgress(
            run_id="r", completed=1, failed=0, skipped=0, in_flight=3, estimated_total=None,
            eta_seconds=None, elapsed_seconds=1.0, embed_rate_per_second=12.5,
            queue_depths={"prepared": 7, "embedded": 2, "Bad Name/../x": 1},
        )
    )  # fmt: skip
    assert value(metrics, "headwater_queue_depth", queue="prepared") == 7
    assert value(metrics, "headwater_queue_depth", queue="embedded") == 2
    assert value(metrics, "headwater_queue_depth", queue="other") == 1
    assert value(metrics, "headwater_embed_rate_limit_requests_per_second") == 12.5
