"""The routes of jobs, the DLQ and queries: HTTP in, ``JobService``/``ops`` calls, HTTP out."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from headwater import registry
from headwater.config import Settings
from headwater.errors import AdapterError, ConfigError, InputError
from headwater.jobs.service import JobService
from headwater.models import Job, JobStatus
from headwater.observability import redact
from headwater.ops.dead_letters import list_letters
from headwater.ops.index import has_index
from headwater.ops.search import Searcher
from headwater.server.schemas import (
    ERRORS,
    QUERY_ERRORS,
    QUERY_MAX_CHARS,
    Action,
    Created,
    DeadLetterList,
    DeadLetterOut,
    Hit,
    JobList,
    JobOut,
    JobRequest,
    QueryOut,
    ReplayRequest,
)


def job_routes(app: FastAPI, settings: Settings, service: JobService, auth: Callable[..., None]) -> None:
    guarded = [Depends(auth)]

    @app.post("/v1/jobs", status_code=201, response_model=Created, dependencies=guarded, tags=["jobs"],
              responses=ERRORS)  # fmt: skip
    async def submit(request: JobRequest) -> Created:
        """Queue a job; it runs with the server's home and settings."""
        spec: dict[str, Any] = {}
        if request.kind in ("docs", "signals"):
            spec["source"] = _source(request.source, settings.api_source_roots or [Path.cwd()])
        if request.kind == "signals" and request.feature_set is not None:
            spec["feature_set"] = request.feature_set
        elif request.ids is not None:
            spec["ids"] = request.ids
        return Created(id=await service.submit(request.kind, spec, request.priority))

    @app.get("/v1/jobs", response_model=JobList, dependencies=guarded, tags=["jobs"], responses=ERRORS)
    async def list_jobs(
        status: Annotated[list[JobStatus] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=settings.api_page_limit)] = 100,
    ) -> JobList:
        """Jobs by priority then age, optionally only some statuses."""
        return JobList(jobs=[_job_out(j) for j in await service.list(status, limit)])

    @app.get(
        "/v1/jobs/{job_id:uuid}", response_model=JobOut, dependencies=guarded, tags=["jobs"], responses=ERRORS
    )
    async def get_job(job_id: UUID) -> JobOut:
        """The job's status, reason and progress counts of its current run."""
        return _job_out(await service.get(job_id.hex))

    @app.delete(
        "/v1/jobs/{job_id:uuid}", status_code=204, dependencies=guarded, tags=["jobs"], responses=ERRORS
    )
    async def delete_job(job_id: UUID) -> Response:
        """Forget a finished job and its event journal (409 while it can still move)."""
        await service.delete(job_id.hex)
        return Response(status_code=204)

    @app.post("/v1/jobs/{job_id:uuid}:{action}", response_model=JobOut, dependencies=guarded, tags=["jobs"],
              responses=ERRORS)  # fmt: skip
    async def act(job_id: UUID, action: Action) -> JobOut:
        """``pause`` (cooperative: PAUSING until the run stops), ``resume`` or ``cancel``."""
        command = {Action.pause: service.pause, Action.resume: service.resume, Action.cancel: service.cancel}
        return _job_out(await command[action](job_id.hex))

    @app.get("/v1/jobs/{job_id:uuid}/events", dependencies=guarded, tags=["jobs"], response_class=Response,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})  # fmt: skip
    async def events(
        job_id: UUID, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
    ) -> Response:
        """The job's journal as Server-Sent Events (``id`` = sequence number), then live events
        until the job is final. Reconnect with ``Last-Event-ID`` to get only what was missed."""
        job = await service.get(job_id.hex)  # 404 before the stream starts
        after = _after(last_event_id)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in service.follow(job.id, after):
                data = redact(event.data)
                kind = str(data.get("type", "message"))
                yield ServerSentEvent(data=json.dumps(data), id=str(event.seq), event=kind)

        return EventSourceResponse(stream(), ping=15, send_timeout=30)


def dlq_routes(app: FastAPI, settings: Settings, service: JobService, auth: Callable[..., None]) -> None:
    guarded = [Depends(auth)]

    @app.get("/v1/dlq", response_model=DeadLetterList, dependencies=guarded, tags=["dlq"], responses=ERRORS)
    async def dlq_list(
        limit: Annotated[int, Query(ge=1, le=settings.api_page_limit)] = 100,
        include_replayed: bool = False,
    ) -> DeadLetterList:
        """Dead-lettered inputs, newest context included (tracebacks and payloads are CLI-only)."""
        letters = await list_letters(settings, limit=limit, include_replayed=include_replayed)
        return DeadLetterList(entries=[DeadLetterOut.model_validate(redact(_letter(lt))) for lt in letters])

    @app.post("/v1/dlq:replay", status_code=201, response_model=Created, dependencies=guarded, tags=["dlq"],
              responses=ERRORS)  # fmt: skip
    async def dlq_replay(request: ReplayRequest) -> Created:
        """Replay as a job (follow it like any other): messages are republished, documents re-run."""
        spec = {} if request.ids is None else {"ids": request.ids}
        return Created(id=await service.submit("replay", spec))


def query_routes(app: FastAPI, settings: Settings, searcher: Searcher, auth: Callable[..., None]) -> None:
    class QueryRequest(BaseModel):
        """Chunks nearest to ``text``, best first; only documents whose path starts with
        ``uri_prefix`` when one is given (a filter applied before ranking: k hits whenever k match)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        text: str = Field(
            min_length=1, max_length=QUERY_MAX_CHARS, pattern=r"\S", description="What to search for"
        )
        k: int = Field(5, ge=1, le=settings.api_page_limit, description="How many hits")
        uri_prefix: str | None = Field(
            None, min_length=1, max_length=4096, description="Only chunks whose uri starts with this"
        )

    @app.post("/v1/query", response_model=QueryOut, dependencies=[Depends(auth)], tags=["query"],
              responses=QUERY_ERRORS)  # fmt: skip
    async def query(request: QueryRequest) -> QueryOut:
        """Search the index with the server's embedder, loaded once for the server's lifetime."""
        started = time.perf_counter()
        if not has_index(settings):
            msg = (
                f"no index in {settings.home} yet: ingest documents first "
                "(POST /v1/jobs or `headwater ingest docs`)"
            )
            raise HTTPException(409, msg)
        try:
            hits = await searcher.search(request.text, request.k, uri_prefix=request.uri_prefix)
        except (ConfigError, AdapterError) as exc:
            raise HTTPException(503, redact(f"the index cannot be searched: {exc}").splitlines()[0]) from exc
        # a secret in a document (an API key in a note) stays in the index, out of the answer
        out = [Hit.model_validate({**h, "text": redact(h["text"]), "uri": redact(h["uri"])}) for h in hits]
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        return QueryOut(hits=out, embedder=searcher.embedder_id or "", took_ms=took_ms)


async def warm(searcher: Searcher) -> None:
    """Open the index (load the model) at start-up, in the background: the first query does not
    pay for it. A failure is left for that query to report."""
    with contextlib.suppress(Exception):
        await searcher.warm()


def _job_out(job: Job) -> JobOut:
    return JobOut.model_validate(redact(msgspec.to_builtins(job)))


def _source(source: str | None, roots: list[Path]) -> str:
    """A URL of a known scheme, or a local folder inside the allowed roots (a token holder must
    not be able to index the server's whole disk). Relative paths are resolved against the cwd."""
    if not source:
        msg = "a docs job needs 'source' (a folder or URL)"
        raise InputError(msg, field="source")
    if registry.scheme_of(source) == "urls+file":  # a list on the server's disk: the same roots
        return "urls+file://" + _source(urlsplit(source).path, roots)
    if registry.scheme_of(source) != "file":
        try:
            registry.create("source", source)  # constructors do no I/O: the URL's own checks
        except ConfigError as exc:
            raise InputError(str(exc), field="source") from exc
        return source
    path = Path(urlsplit(source).path if source.startswith("file:") else source).expanduser().resolve()
    allowed = [root.expanduser().resolve() for root in roots]
    if not any(path.is_relative_to(root) for root in allowed):
        msg = f"source {source!r} is outside the folders jobs may read (HEADWATER_API_SOURCE_ROOTS)"
        raise InputError(msg, field="source")
    if not path.exists():
        msg = f"source {source!r} does not exist on the server (resolved to {path})"
        raise InputError(msg, field="source")
    return str(path)


def _after(last_event_id: str | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return 0
    try:
        after = int(last_event_id)
    except ValueError:
        after = -1
    if after < 0:
        raise HTTPException(400, f"Last-Event-ID must be a sequence number, not {last_event_id!r}")
    return after


def _letter(letter: Any) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(letter)
    data.pop("traceback", None)
    data.pop("payload", None)
    return data
