"""A run's reports on itself: ``BatchProgress`` early and often until there is an ETA, then once
per interval, and the ``RunCompleted`` summary that ends every successful run."""

from __future__ import annotations

import asyncio
import contextlib

from headwater.events import BatchProgress, RunCompleted
from headwater.pipeline.document_run import RunState
from headwater.ports import RateLimited


class ProgressReports(RunState):
    """The progress ticker and the final summary, from the run's counters."""

    async def _tick(self) -> None:
        """Reports come early and often until there is an ETA (a terminal shows a total and a
        rate within a second or two, the listing runs far behind), then one per interval, and
        one at once when the source's count arrives."""
        early = min(0.5, self.s.progress_interval_seconds)
        await asyncio.sleep(early)
        while True:
            event = self._progress_event()
            await self.emit(event)
            self._counted.clear()
            interval = early if event.eta_seconds is None else self.s.progress_interval_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._counted.wait()

    def _progress_event(self) -> BatchProgress:
        pr = self.progress
        embedder = self.p.embedder
        return BatchProgress(
            run_id=self.run_id,
            completed=pr.completed,
            failed=pr.failed,
            skipped=pr.skipped,
            in_flight=max(self.in_flight, 0),
            estimated_total=pr.total,
            eta_seconds=pr.eta_seconds(),
            elapsed_seconds=round(pr.clock() - pr.started, 3),
            embed_rate_per_second=embedder.rate_limit if isinstance(embedder, RateLimited) else None,
            queue_depths={
                "scanned": self.work.qsize(),
                "prepared": self.ready.qsize(),
                "embedded": self.embedded.qsize(),
            },
            listed=pr.listed,
            chunks_embedded=self.committer.stats.embedded,
        )

    def _final(self) -> RunCompleted:
        c, st = self.counts, self.committer.stats
        return RunCompleted(
            run_id=self.run_id,
            documents_seen=c["seen"],
            documents_added=c["added"],
            documents_updated=c["updated"],
            documents_unchanged=c["unchanged"],
            documents_deleted=c["deleted"],
            documents_skipped=c["skipped"],
            documents_failed=c["failed"],
            chunks_embedded=st.embedded,
            chunks_deleted=c["chunks_deleted"],
            chunks_reused=st.reused,
            embed_calls=st.embed_calls,
            elapsed_seconds=round(self.progress.clock() - self.progress.started, 3),
        )
