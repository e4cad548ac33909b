"""Metrics, logs and traces (DESIGN §6): Prometheus counters fed by pipeline events, structlog
JSON with correlation ids, redaction of secrets, and an opt-in span helper.

Nothing here runs at import time: each ``Metrics`` owns its registry (a server and a test can hold
several), and ``configure_logging`` is called by the CLI or the server, never by library code.
Label values come from fixed vocabularies only; anything outside them is counted as ``other``,
so a corpus of a million documents still yields a few dozen series.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from headwater import errors
from headwater.events import Event, to_dict
from headwater.redaction import redact_value

T = TypeVar("T")
OTHER = "other"

_EVENT_TYPES = frozenset(
    {
        "RunStarted", "DocumentCompleted", "DocumentSkipped", "DocumentFailed", "DocumentDeleted",
        "BatchProgress", "RunCompleted", "SignalRejected", "WindowsClosed", "SignalProgress",
        "ChangesPublished", "MessagesPublished", "MessageDeadLettered", "WorkerBatch", "WorkerStopped",
        "ExpectationsFailed",
    }
)  # fmt: skip
_STAGES = frozenset(
    {
        "discover", "read", "extract", "prepare", "embed", "commit", "diff", "watch", "publish",
        "deliver", "sink", "decode", "windows", "features", "worker", "run_documents", "run_signals",
        "expectations",
    }
)  # fmt: skip
_SKIP_REASONS = frozenset({"unchanged", "previously_failed", "unsupported"})
_TOPIC_KINDS = {"docs": "docs", "signals": "signals"}
_ERROR_NAMES = frozenset(
    {n for n, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, BaseException)}
    | {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, BaseException)}
    | {"CircuitOpenError", "JobNotFound", "IllegalTransition", "PrepareFailure"}
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_FEATURE_SET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # declared in configuration: a bounded set
_WINDOW = re.compile(r"^\d{1,6}(ms|s|m|h|d)$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")  # a declared field: bounded by configuration
_EXPECTATIONS = frozenset({"min", "max", "not_null", "allowed", "freshness"})
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def _pick(value: object, allowed: Mapping[str, str] | frozenset[str]) -> str:
    name = str(value)
    if isinstance(allowed, Mapping):
        return allowed.get(name, OTHER)
    return name if name in allowed else OTHER


def _count(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


class Metrics:
    """The Prometheus metrics of one process, on a registry of its own.

    ``observe`` is an event observer (``JobService(observers=[metrics.observe])``); it takes an
    ``Event`` or its ``to_dict`` form, as job journals store it. Gauges that no event carries
    (queue depths, DLQ size, job counts, the limiter's rate) are set by whoever knows them, at
    scrape time where possible.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.documents = Counter("headwater_documents_total", "Documents by the stage that decided "
                                 "their outcome.", ["stage", "outcome"], registry=r)  # fmt: skip
        self.chunks = Counter("headwater_chunks_total", "Chunks embedded, reused or deleted.",
                              ["outcome"], registry=r)  # fmt: skip
        self.signals = Counter("headwater_signals_total", "Signal events and feature rows by stage.",
                               ["stage", "outcome"], registry=r)  # fmt: skip
        self.errors = Counter("headwater_errors_total", "Failures by stage and error class.",
                              ["stage", "reason"], registry=r)  # fmt: skip
        self.messages = Counter("headwater_messages_total", "Bus messages by topic kind and outcome.",
                                ["topic_kind", "outcome"], registry=r)  # fmt: skip
        self.stage_duration = Histogram("headwater_stage_duration_seconds", "Wall time of runs, "
                                        "publishes and workers.", ["stage"], registry=r,
                                        buckets=_DURATION_BUCKETS)  # fmt: skip
        self.feature_latency = Histogram("headwater_feature_latency_seconds", "From a window's end "
                                         "to its row being readable.", ["window"], registry=r,
                                         buckets=_LATENCY_BUCKETS)  # fmt: skip
        self.queue_depth = Gauge("headwater_queue_depth", "Items waiting in a bounded queue.",
                                 ["queue"], registry=r)  # fmt: skip
        self.consumer_lag = Gauge("headwater_consumer_lag_messages", "Messages not yet consumed.",
                                  ["topic_kind"], registry=r)  # fmt: skip
        self.dlq_size = Gauge("headwater_dlq_size", "Dead letters not yet replayed.", registry=r)
        self.rate_limit = Gauge("headwater_embed_rate_limit_requests_per_second",
                                "The embed rate limiter's current rate.", registry=r)  # fmt: skip
        self.jobs = Gauge("headwater_jobs", "Jobs by status.", ["status"], registry=r)
        self.job_events = Counter("headwater_job_events_total", "Pipeline events by type.", ["type"],
                                  registry=r)  # fmt: skip
        self.held_events = Gauge("headwater_signal_held_events", "Late events held (policy hold), not "
                                 "yet released.", ["feature_set"], registry=r)  # fmt: skip
        self.held_oldest = Gauge("headwater_signal_held_oldest_event_timestamp_seconds", "Event time "
                                 "of the oldest held event (0: none held).", ["feature_set"],
                                 registry=r)  # fmt: skip
        self.expectation_failures = Counter("headwater_expectation_failures_total", "Events failing a "
                                            "declared expectation (freshness: stale micro-batches).",
                                            ["feature_set", "field", "expectation"],
                                            registry=r)  # fmt: skip
        self._job_statuses: set[str] = set()

    # -- events ------------------------------------------------------------------------------------
    def observe(self, event: Event | Mapping[str, Any]) -> None:
        data = to_dict(event) if isinstance(event, Event) else event
        kind = str(data.get("type", ""))
        if kind == "RunCompleted" and ("events_seen" in data or "feature_set" in data):
            kind = "SignalRunCompleted"
        self.job_events.labels(_pick(data.get("type"), _EVENT_TYPES)).inc()
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, data)

    def _document_completed(self, d: Mapping[str, Any]) -> None:
        outcome = "updated" if d.get("outcome") == "updated" else "added"
        self.documents.labels("commit", outcome).inc()
        self.chunks.labels("embedded").inc(_count(d, "chunks_embedded"))
        self.chunks.labels("reused").inc(max(0.0, _count(d, "chunks") - _count(d, "chunks_embedded")))
        self.chunks.labels("deleted").inc(_count(d, "chunks_deleted"))

    def _document_skipped(self, d: Mapping[str, Any]) -> None:
        self.documents.labels("diff", _pick(d.get("reason"), _SKIP_REASONS)).inc()

    def _document_failed(self, d: Mapping[str, Any]) -> None:
        stage = _pick(d.get("stage"), _STAGES)
        self.documents.labels(stage, "failed").inc()
        self.errors.labels(stage, _pick(d.get("error_type"), _ERROR_NAMES)).inc()

    def _document_deleted(self, d: Mapping[str, Any]) -> None:
        self.documents.labels("commit", "deleted").inc()
        self.chunks.labels("deleted").inc(_count(d, "chunks_deleted"))

    def _batch_progress(self, d: Mapping[str, Any]) -> None:
        self.queue_depth.labels("documents_in_flight").set(_count(d, "in_flight"))
        for queue, depth in (d.get("queue_depths") or {}).items():
            self.set_queue_depth(str(queue), int(depth))
        if d.get("embed_rate_per_second") is not None:
            self.set_rate_limit(float(d["embed_rate_per_second"]))

    def _run_completed(self, d: Mapping[str, Any]) -> None:
        self.stage_duration.labels("run_documents").observe(_count(d, "elapsed_seconds"))

    def _signal_rejected(self, d: Mapping[str, Any]) -> None:
        stage = "expectations" if str(d.get("reason", "")).startswith("expectation ") else "decode"
        self.signals.labels(stage, "rejected").inc()
        self.errors.labels(stage, "InputError").inc()

    def _expectations_failed(self, d: Mapping[str, Any]) -> None:
        name = str(d.get("feature_set"))
        feature_set = name if _FEATURE_SET.match(name) else OTHER
        for failure in d.get("failures") or []:
            field = str(failure.get("field"))
            self.expectation_failures.labels(
                feature_set,
                field if _FIELD.match(field) else OTHER,
                _pick(failure.get("expectation"), _EXPECTATIONS),
            ).inc(_count(failure, "count"))

    def _windows_closed(self, d: Mapping[str, Any]) -> None:
        self.signals.labels("windows", "accepted").inc(_count(d, "points"))
        self.signals.labels("windows", "late").inc(_count(d, "late"))
        self.signals.labels("features", "rows_written").inc(_count(d, "rows"))
        for window, seconds in (d.get("feature_latency_seconds") or {}).items():
            self.observe_feature_latency(str(window), float(seconds))

    def _signal_run_completed(self, d: Mapping[str, Any]) -> None:
        self.signals.labels("decode", "duplicate").inc(_count(d, "duplicates"))
        self.signals.labels("windows", "late_dropped").inc(_count(d, "late_dropped"))
        self.signals.labels("windows", "late_corrected").inc(_count(d, "late_corrected"))
        self.stage_duration.labels("run_signals").observe(_count(d, "elapsed_seconds"))

    def _changes_published(self, d: Mapping[str, Any]) -> None:
        for outcome in ("added", "updated", "deleted", "unchanged"):
            self.documents.labels("watch", outcome).inc(_count(d, outcome))

    def _messages_published(self, d: Mapping[str, Any]) -> None:
        self.messages.labels(_pick(d.get("topic"), _TOPIC_KINDS), "published").inc(_count(d, "messages"))
        self.stage_duration.labels("publish").observe(_count(d, "elapsed_seconds"))

    def _message_dead_lettered(self, d: Mapping[str, Any]) -> None:
        self.errors.labels("worker", _pick(d.get("error_type"), _ERROR_NAMES)).inc()

    def _worker_batch(self, d: Mapping[str, Any]) -> None:
        topic_kind = _pick(d.get("topic"), _TOPIC_KINDS)
        for outcome in ("acked", "dead_lettered", "already_done"):
            self.messages.labels(topic_kind, outcome).inc(_count(d, outcome))
        if d.get("lag") is not None:
            self.consumer_lag.labels(topic_kind).set(_count(d, "lag"))

    def _worker_stopped(self, d: Mapping[str, Any]) -> None:
        self.stage_duration.labels("worker").observe(_count(d, "elapsed_seconds"))

    # -- values no event carries ---------------------------------------------------------------------
    def set_queue_depth(self, queue: str, depth: int) -> None:
        """``queue`` is a name from code (``"embed"``), never from data."""
        self.queue_depth.labels(queue if _NAME.match(queue) else OTHER).set(depth)

    def set_dlq_size(self, n: int) -> None:
        self.dlq_size.set(n)

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        """Statuses absent from ``counts`` drop to zero: a gauge must not keep a stale count."""
        labelled = {(s if _NAME.match(s) else OTHER): n for s, n in counts.items()}
        for status in self._job_statuses - set(labelled):
            self.jobs.labels(status).set(0)
        for status, n in labelled.items():
            self.jobs.labels(status).set(n)
        self._job_statuses |= set(labelled)

    def set_held_events(self, feature_set: str, count: int, oldest_event_time_ms: int | None) -> None:
        """The held set of a feature set (``ops.release.held_set``), set by whoever computed it."""
        label = feature_set if _FEATURE_SET.match(feature_set) else OTHER
        self.held_events.labels(label).set(count)
        self.held_oldest.labels(label).set(0 if oldest_event_time_ms is None else oldest_event_time_ms / 1000)

    def set_rate_limit(self, rate: float) -> None:
        self.rate_limit.set(rate)

    def set_consumer_lag(self, kind: str, n: int) -> None:
        self.consumer_lag.labels(_pick(kind, _TOPIC_KINDS)).set(n)

    def observe_feature_latency(self, window: str, seconds: float) -> None:
        """``window`` is a feature set's window spec (``"5m"``); the feature set bounds them."""
        self.feature_latency.labels(window if _WINDOW.match(window) else OTHER).observe(max(0.0, seconds))

    # -- exposition ----------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve_http(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """``/metrics`` for a stream worker, which has no API server; loopback unless asked."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(httpd, thread)


_HANDLERS: dict[str, Callable[[Metrics, Mapping[str, Any]], None]] = {
    "DocumentCompleted": Metrics._document_completed,
    "DocumentSkipped": Metrics._document_skipped,
    "DocumentFailed": Metrics._document_failed,
    "DocumentDeleted": Metrics._document_deleted,
    "BatchProgress": Metrics._batch_progress,
    "RunCompleted": Metrics._run_completed,
    "SignalRejected": Metrics._signal_rejected,
    "ExpectationsFailed": Metrics._expectations_failed,
    "WindowsClosed": Metrics._windows_closed,
    "SignalRunCompleted": Metrics._signal_run_completed,
    "ChangesPublished": Metrics._changes_published,
    "MessagesPublished": Metrics._messages_published,
    "MessageDeadLettered": Metrics._message_dead_lettered,
    "WorkerBatch": Metrics._worker_batch,
    "WorkerStopped": Metrics._worker_stopped,
}


class MetricsServer:
    """The exporter thread of ``Metrics.serve_http``; ``close`` stops it and frees the port."""

    def __init__(self, httpd: Any, thread: Any) -> None:
        self._httpd, self._thread = httpd, thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --- redaction -------------------------------------------------------------------------------------

_secrets: tuple[str, ...] = ()  # replaced, never mutated: readers on other threads see old or new
_MIN_SECRET_CHARS = 4  # a shorter "secret" would mask every occurrence of a common word


def register_secret(value: str) -> None:
    """Mask every exact occurrence of ``value`` from now on, in logs and in ``redact``: for
    secrets no pattern recognizes (the API token, a password from settings)."""
    global _secrets  # noqa: PLW0603 (the process-wide list the server adds its token to)
    if len(value) >= _MIN_SECRET_CHARS and value not in _secrets:
        _secrets = (*_secrets, value)


def redact(value: T) -> T:
    """``value`` (str, bytes, dict, list, nested) with secrets removed, and nothing else changed
    (timestamps, numbers, hosts and addresses stay readable); see ``headwater.redaction``.
    Containers are copied and keep their type."""
    return redact_value(value, _secrets)


def redact_processor(_logger: Any, _method: str, event_dict: structlog.typing.EventDict) -> Any:
    """The last structlog step before rendering: the message, bound values and tracebacks.
    Objects become their ``repr`` first, so a secret inside one cannot reach the renderer."""
    return redact_value(_plain(event_dict), _secrets)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


# --- logging ---------------------------------------------------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler ``configure_logging`` installed, so a second call replaces it."""


def configure_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging (uvicorn, httpx, …) through one chain: correlation ids
    from ``structlog.contextvars``, ISO UTC timestamps, tracebacks as text, then redaction, then
    JSON or console lines on ``stream`` (stderr by default). Safe to call again: it replaces the
    handler it installed earlier and leaves other handlers alone."""
    if level.lower() not in _LEVELS or fmt not in {"console", "json"}:
        msg = f"logging: level must be one of {sorted(_LEVELS)} and fmt console|json, got {level!r}, {fmt!r}"
        raise ValueError(msg)
    out = stream if stream is not None else sys.stderr
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level.lower()])
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # a logger made before configure_logging must follow it
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


# --- tracing ---------------------------------------------------------------------------------------


def _tracer() -> Any:
    """The ``headwater`` tracer when ``HEADWATER_OTEL`` is on and the ``otel`` extra is installed."""
    if os.environ.get("HEADWATER_OTEL", "").lower() not in {"1", "true", "yes", "on"}:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("headwater")


@contextlib.contextmanager
def span(name: str, parent: Any = None, **attrs: str | int | float | bool) -> Iterator[Any]:
    """An OpenTelemetry span when ``HEADWATER_OTEL`` is on and the ``otel`` extra is installed;
    otherwise nothing, at the cost of one environment lookup. Yields the span or ``None``.
    ``parent``: a span from ``open_span`` (code that cannot keep a span current across its
    steps, an async generator that yields between them); else the current span is the parent."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    with tracer.start_as_current_span(name, context=context, attributes=attrs) as current:
        yield current


def open_span(name: str, **attrs: str | int | float | bool) -> Any:
    """A span that is started but not made current (end it with ``.end()``), or None when off."""
    tracer = _tracer()
    return None if tracer is None else tracer.start_span(name, attributes=attrs)
