"""A run's failure handling: a document that cannot be indexed is dead-lettered (a value, not a
crash), while a failure that is not the document's fault stops the run instead.

An embedder that is down, or a full disk, would otherwise dead-letter every document in turn;
a stopped run gives back the documents it had claimed, so the same command continues once the
cause is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Sequence
from typing import Any

from headwater.errors import (
    ConfigError,
    EmbedderUnavailable,
    HeadwaterError,
    RetryableError,
    StoreUnavailable,
    disk_full,
)
from headwater.events import DocumentFailed
from headwater.models import DeadLetter, DocState
from headwater.pipeline.commit import ReadyDocument
from headwater.pipeline.document_run import RunState, Work
from headwater.stages.prepare import PrepareFailure


class FailureSteps(RunState):
    """Dead letters for the documents at fault; claims given back when the run stops."""

    async def _release_claims(self) -> None:
        """A run that stops (a stop request, an embedder outage, a full disk) was not killed by
        the documents it had claimed: their attempts are taken back, so the next run does them
        as usual rather than one at a time as suspects, and no number of stops dead-letters
        them. Best effort: if even this fails (the disk is full), they are only suspects."""
        if self.claimed:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.p.metadata.release(sorted(self.claimed)))

    async def _fail_group(self, group: Sequence[ReadyDocument], exc: HeadwaterError) -> None:
        status = "error" if isinstance(exc, RetryableError) else "failed"
        for ready in group:
            await self._fail(
                Work(ready.entry, ready.doc_id, ready.before, 0),
                "commit",
                exc,
                status=status,
                content_hash=ready.content_hash,
                delete_chunks=False,
            )

    async def _fail(
        self,
        work: Work,
        stage: str,
        error: Exception | PrepareFailure,
        *,
        status: str,
        content_hash: str | None = None,
        delete_chunks: bool = True,
    ) -> None:
        """Dead-letter one document. Its old chunks go too: a clean run would not index bad input."""
        p = self.p
        self.in_flight -= 1
        self.claimed.discard(work.doc_id)
        attempts = max(work.attempts, 1)
        letter = _dead_letter(work, p.source.uri, stage, error, attempts)
        delete_chunks = delete_chunks and work.before is not None and work.before.content_hash is not None
        if delete_chunks:
            await self.vectors_ready()
            await p.vectors.delete_stale({work.doc_id: set()})
        state = _failed_state(work, p.source.uri, status, content_hash)
        await p.metadata.commit([state], {work.doc_id: []} if delete_chunks else {})
        dlq_id = await p.metadata.add(letter)
        self.counts["failed"] += 1
        self.progress.failed += 1
        await self.emit(
            DocumentFailed(
                run_id=self.run_id,
                doc_id=work.doc_id,
                uri=work.entry.relpath,
                stage=stage,
                error_type=letter.error_type,
                message=letter.message,
                attempts=attempts,
                dlq_id=dlq_id,
            )
        )


def _dead_letter(
    work: Work, source: str, stage: str, error: Exception | PrepareFailure, attempts: int
) -> DeadLetter:
    """What the DLQ keeps of one failure: enough to read the cause and replay the input."""
    if isinstance(error, PrepareFailure):  # raised in a worker process: only its text came back
        error_type, message, tb = error.error_type, error.message, error.traceback
    else:
        error_type, message = type(error).__name__, str(error)
        tb = "".join(traceback.format_exception(error))
    return DeadLetter(
        id=0,
        kind="document",
        input_ref=work.entry.relpath,
        source=source,
        stage=stage,
        error_type=error_type,
        message=message,
        attempts=attempts,
        traceback=tb,
        created_at="",
    )


def _failed_state(work: Work, source: str, status: str, content_hash: str | None) -> DocState:
    """The document's record after a failure: unclaimed, one more error, its version kept, and
    its size and mtime, so an unchanged bad file is skipped unread by the next run."""
    before = work.before
    return DocState(
        doc_id=work.doc_id,
        source=source,
        uri=work.entry.relpath,
        content_hash=content_hash,
        size=work.entry.size,
        mtime_ns=work.entry.mtime_ns,
        status=status,
        attempts=0,
        error_count=(before.error_count if before else 0) + 1,
        version=before.version if before else 0,
    )


def stop_if_not_the_documents_fault(exc: HeadwaterError) -> None:
    """An embedder or a store that is down, a store that cannot be opened with these settings,
    or a full disk would dead-letter every document of the run in turn: the run stops instead,
    and the same command continues when it is fixed."""
    if isinstance(exc, EmbedderUnavailable | StoreUnavailable | ConfigError) or disk_full(exc) is not None:
        raise exc


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The root cause, so callers see a ConfigError rather than a TaskGroup's wrapper."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first
