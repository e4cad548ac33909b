"""OpenLineage run events: each document run and signal backfill reports START, then COMPLETE,
FAIL or ABORT, naming its source as the input dataset and the stores it wrote as outputs.

Opt-in: ``HEADWATER_OPENLINEAGE_URL`` (``http(s)://HOST[:PORT]``, posted to ``/api/v1/lineage``
as Marquez and the other receivers take them, or ``file:///PATH`` for one JSON event a line),
through the openlineage-python client (extra ``[lineage]``). A run's events are derived from its
own event stream (``observe``), so lineage sees exactly what the run reported; sending is in a
thread, and a receiver that is down costs a warning, never the run. Dataset names follow the
OpenLineage naming spec loosely: namespace ``scheme://host``, name the path, credentials removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from headwater.errors import ConfigError
from headwater.events import Event
from headwater.redaction import redact_text, redact_url

E = TypeVar("E", bound=Event)
PRODUCER = "https://github.com/headwater/headwater"
log = logging.getLogger(__name__)


def dataset(url: str) -> tuple[str, str]:
    """(namespace, name) of a store or source URL: ``s3://bucket/docs`` → (``s3://bucket``, ``docs``);
    a local path → (``file``, its absolute path)."""
    parts = urlsplit(redact_url(url))
    if len(parts.scheme) <= 1:  # a bare path (or a Windows drive)
        return "file", url
    host = parts.netloc.rpartition("@")[2]
    namespace = f"{parts.scheme}://{host}" if host else parts.scheme
    name = "/" + parts.path.lstrip("/")  # sqlite:////abs/path is the file /abs/path
    if parts.query:
        name += f"?{parts.query}"
    return namespace, name


class Lineage:
    """One pipeline's lineage: the job it is (namespace, name), what it reads and writes."""

    def __init__(
        self, url: str, *, job: str, inputs: list[str], outputs: list[str], namespace: str = "headwater"
    ) -> None:
        self.client = _client(url)
        self.job, self.namespace = job, namespace
        self.inputs, self.outputs = [dataset(u) for u in inputs], [dataset(u) for u in outputs]

    async def observe(self, events: AsyncGenerator[E, None]) -> AsyncGenerator[E, None]:
        """``events`` passed through (and closed with this generator: a run must not outlive
        its consumer); START on the run's RunStarted, COMPLETE on its RunCompleted (what it
        wrote as the output's row count), FAIL when it raises, ABORT when stopped early."""
        run_id: str | None = None
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if type(event).__name__ == "RunStarted":
                        run_id = _uuid(getattr(event, "run_id", "") or uuid.uuid4().hex)
                        await self._emit("START", run_id)
                    elif type(event).__name__.endswith("RunCompleted") and run_id is not None:
                        rows = getattr(event, "chunks_embedded", None)
                        rows = getattr(event, "feature_rows_written", rows)
                        await self._emit("COMPLETE", run_id, rows=rows)
                        run_id = None
                    yield event
        except BaseException as exc:
            if run_id is not None:
                cancelled = isinstance(exc, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt)
                await asyncio.shield(self._emit("ABORT" if cancelled else "FAIL", run_id, error=exc))
            raise

    async def _emit(
        self, state: str, run_id: str, *, rows: int | None = None, error: BaseException | None = None
    ) -> None:
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import error_message_run, output_statistics_output_dataset

        facets: dict[str, Any] = {}
        if error is not None:
            message = redact_text(str(error) or type(error).__name__)[:2000]
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=message, programmingLanguage="python"
            )
        statistics: dict[str, Any] = {}
        if rows is not None:  # what the run wrote: chunks embedded, feature rows written
            statistics["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
            )
        event = RunEvent(
            eventType=RunState[state],
            eventTime=datetime.now(UTC).isoformat(),
            producer=PRODUCER,
            run=Run(runId=run_id, facets=facets),
            job=Job(namespace=self.namespace, name=self.job),
            inputs=[InputDataset(namespace=ns, name=name) for ns, name in self.inputs],
            outputs=[
                OutputDataset(namespace=ns, name=name, outputFacets=statistics if i == 0 else {})
                for i, (ns, name) in enumerate(self.outputs)
            ],
        )
        try:
            await asyncio.to_thread(self.client.emit, event)
        except Exception as exc:  # noqa: BLE001 - lineage must never fail the run it reports
            log.warning("OpenLineage %s event not sent: %s", state, redact_text(str(exc)))


def _client(url: str) -> Any:
    try:
        from openlineage.client import OpenLineageClient
        from openlineage.client.transport.file import FileConfig, FileTransport
        from openlineage.client.transport.http import HttpConfig, HttpTransport
    except ImportError as exc:
        hint = "pip install 'headwater[lineage]'"
        msg = f"HEADWATER_OPENLINEAGE_URL needs a package that is not installed ({exc.name}): {hint}"
        raise ConfigError(msg) from exc
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        # fewer and shorter retries than the client's default (~9 s per event against a receiver
        # that is down, twice a run): lineage waits for no one
        retry = {"total": 3, "connect": 3, "read": 3, "backoff_factor": 0.2,
                 "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}  # fmt: skip
        return OpenLineageClient(transport=HttpTransport(HttpConfig(url=url, timeout=5.0, retry=retry)))
    if parts.scheme == "file" and parts.path:
        return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=parts.path, append=True)))
    msg = f"HEADWATER_OPENLINEAGE_URL {redact_url(url)!r}: use http(s)://HOST[:PORT] or file:///PATH"
    raise ConfigError(msg)


def _uuid(run_id: str) -> str:
    """OpenLineage run ids are UUIDs: the run's own id, mapped to one stably."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"headwater:{run_id}"))
