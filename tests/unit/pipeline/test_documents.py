"""The document pipeline through its Python API, with injected embedder failures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from headwater import build_document_pipeline, load_settings
from headwater.events import (
    BatchProgress,
    DocumentCompleted,
    DocumentFailed,
    DocumentSkipped,
    DocumentStarted,
    RunCompleted,
    RunStarted,
)
from headwater.models import make_doc_id
from headwater.ops.dead_letters import replay_documents
from headwater.testing import FailingEmbedder, PermanentError, collect_events

SAMPLES = Path(__file__).resolve().parents[3] / "samples" / "docs"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    shutil.copytree(SAMPLES, tmp_path / "corpus")
    return tmp_path / "corpus"


def settings(tmp_path: Path, **extra: object) -> object:
    return load_settings(home=tmp_path / "home", workers=1, retry_initial_seconds=0.01, **extra)


async def test_stream_events_starts_and_ends_with_run_events(corpus: Path, tmp_path: Path) -> None:
    pipeline = build_document_pipeline(settings(tmp_path, progress_interval_seconds=0.01), str(corpus))
    events = await collect_events(pipeline.stream_events())
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunCompleted)
    assert sum(isinstance(e, DocumentCompleted) for e in events) == 6
    assert any(isinstance(e, BatchProgress) for e in events)
    assert len({e.run_id for e in events}) == 1


async def test_document_started_events_are_opt_in_and_precede_each_outcome(
    corpus: Path, tmp_path: Path
) -> None:
    quiet = await collect_events(build_document_pipeline(settings(tmp_path), str(corpus)).stream_events())
    assert not any(isinstance(e, DocumentStarted) for e in quiet)

    (corpus / "guides" / "retries.md").write_bytes(b"\xff\xfe broken")  # fails at extraction
    (corpus / "guides" / "signals.md").touch()  # new mtime, same bytes: read, then skipped
    s = settings(tmp_path, document_started_events=True)
    events = await collect_events(build_document_pipeline(s, str(corpus)).stream_events())
    started = {e.doc_id: i for i, e in enumerate(events) if isinstance(e, DocumentStarted)}
    ends = DocumentCompleted | DocumentFailed | DocumentSkipped
    outcomes = {e.doc_id: i for i, e in enumerate(events) if isinstance(e, ends)}
    read = {make_doc_id("guides/retries.md"), make_doc_id("guides/signals.md")}
    assert set(started) == read, [e for e in events if isinstance(e, DocumentStarted)]
    assert all(started[d] < outcomes[d] for d in read)  # each started document then ends
    assert len(outcomes) == 6  # the four unchanged by size and mtime: skipped, never started


async def test_retryable_embedder_errors_are_retried(corpus: Path, tmp_path: Path) -> None:
    embedder = FailingEmbedder(fail_times=2)
    final = await build_document_pipeline(settings(tmp_path), str(corpus), embedder=embedder).run_async()
    assert embedder.failures == 2
    assert final.documents_added == 6 and final.documents_failed == 0


async def test_permanent_embedder_errors_dead_letter_then_recover(corpus: Path, tmp_path: Path) -> None:
    broken = FailingEmbedder(poison="exponential backoff", error=PermanentError)
    s = settings(tmp_path, commit_batch_chunks=1)  # one document per commit group
    events = await collect_events(build_document_pipeline(s, str(corpus), embedder=broken).stream_events())
    failed = [e for e in events if isinstance(e, DocumentFailed)]
    assert [e.uri for e in failed] == ["guides/retries.md"]
    assert failed[0].stage == "commit" and failed[0].error_type == "PermanentError"
    assert events[-1].documents_added == 5

    again = await build_document_pipeline(s, str(corpus)).run_async()  # permanent: not retried blindly
    assert (again.documents_skipped, again.documents_unchanged, again.documents_failed) == (1, 5, 0)
    replayed = await replay_documents(s, None)  # the embedder was fixed: replay the DLQ
    assert [r.documents_added for r in replayed] == [1]


async def test_retryable_failures_are_retried_on_the_next_run(corpus: Path, tmp_path: Path) -> None:
    s = settings(tmp_path, commit_batch_chunks=1)
    down = FailingEmbedder(fail_times=10**6)
    first = await build_document_pipeline(s, str(corpus), embedder=down).run_async()
    assert first.documents_failed == 6
    second = await build_document_pipeline(s, str(corpus)).run_async()
    assert second.documents_added == 6 and second.documents_failed == 0


async def test_only_limits_the_run_and_deletes_nothing(corpus: Path, tmp_path: Path) -> None:
    s = settings(tmp_path)
    await build_document_pipeline(s, str(corpus)).run_async()
    (corpus / "guides" / "signals.md").unlink()
    (corpus / "guides" / "retries.md").write_text("# Retries\n\nRewritten.")
    final = await build_document_pipeline(s, str(corpus), only={"guides/retries.md"}).run_async()
    assert (final.documents_seen, final.documents_updated, final.documents_deleted) == (1, 1, 0)


class WarmingEmbedder(FailingEmbedder):
    """A local-model embedder (ports.LoadsModel) that records when the pipeline asks it to load
    its model, and what it embedded by then."""

    def __init__(self) -> None:
        super().__init__()
        self.warmed_after_texts: list[int] = []

    async def warm(self) -> None:
        self.warmed_after_texts.append(self.texts)

    async def single_threaded(self) -> None:
        return None


async def test_an_embedder_is_warmed_once_when_there_is_work_and_never_on_a_no_change_run(
    corpus: Path, tmp_path: Path
) -> None:
    s = settings(tmp_path)
    first = WarmingEmbedder()
    await build_document_pipeline(s, str(corpus), embedder=first).run_async()
    assert first.warmed_after_texts == [0]  # once, before the first embedding
    second = WarmingEmbedder()
    final = await build_document_pipeline(s, str(corpus), embedder=second).run_async()
    assert final.documents_unchanged == 6 and second.warmed_after_texts == []
    (corpus / "guides" / "retries.md").unlink()  # only a deletion: the store opens, not the model
    third = WarmingEmbedder()
    final = await build_document_pipeline(s, str(corpus), embedder=third).run_async()
    assert final.documents_deleted == 1 and third.warmed_after_texts == []


async def test_touched_files_are_skipped_and_their_new_mtime_recorded_in_one_go(
    corpus: Path, tmp_path: Path
) -> None:
    """Same bytes, new mtime (a checkout, a restore): read and hashed once, not re-indexed, and
    recorded so the next run skips them without reading."""
    s = settings(tmp_path)
    await build_document_pipeline(s, str(corpus)).run_async()
    touched = [corpus / "guides" / "retries.md", corpus / "guides" / "signals.md"]
    for path in touched:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    final = await build_document_pipeline(s, str(corpus)).run_async()
    assert (final.documents_unchanged, final.documents_updated, final.chunks_embedded) == (6, 0, 0)
    pipeline = build_document_pipeline(s, str(corpus))
    await pipeline.metadata.open()
    try:
        versions = await pipeline.metadata.versions(
            pipeline.source.uri, ["guides/retries.md", "guides/signals.md"]
        )
    finally:
        await pipeline.metadata.close()
    relpaths = {p: str(p.relative_to(corpus)) for p in touched}
    assert versions == {
        rel: (p.stat().st_size, p.stat().st_mtime_ns, "done", make_doc_id(rel)) for p, rel in relpaths.items()
    }


async def test_a_run_traces_each_stage_under_one_run_span_with_counts(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEADWATER_OTEL on: scan, read, extract, embed, write and commit spans (and delete on a
    re-run that finds a file gone), children of the run's span, their counts as attributes."""
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

    await build_document_pipeline(settings(tmp_path), str(corpus)).run_async()
    spans = exporter.get_finished_spans()
    (run,) = [s for s in spans if s.name == "headwater.docs.run"]
    assert run.attributes is not None and run.attributes["documents.added"] == 6
    stages = {s.name for s in spans if s.parent is not None and s.parent.span_id == run.context.span_id}
    assert stages >= {f"headwater.docs.{n}" for n in ("scan", "read", "extract", "embed", "write", "commit")}
    assert all(s.context.trace_id == run.context.trace_id for s in spans)

    def total(name: str, attribute: str) -> int:
        return sum(int((s.attributes or {})[attribute]) for s in spans if s.name == name)

    assert total("headwater.docs.read", "documents") == 6
    assert total("headwater.docs.extract", "chunks") == total("headwater.docs.embed", "chunks") > 0
    assert total("headwater.docs.scan", "listed") == 6

    exporter.clear()
    (corpus / "guides" / "retries.md").unlink()
    await build_document_pipeline(settings(tmp_path), str(corpus)).run_async()
    names = [s.name for s in exporter.get_finished_spans()]
    assert "headwater.docs.delete" in names and "headwater.docs.embed" not in names
