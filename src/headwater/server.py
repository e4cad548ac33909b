"""The HTTP API (DESIGN §6): jobs, their live events as Server-Sent Events, the DLQ, queries of
the index, probes, metrics.

Thin by rule (DESIGN §8): routes translate HTTP to ``JobService`` calls and errors to status
codes; the jobs run exactly what ``headwater ingest`` runs, built by the same composition code.

Security model: one bearer token (``HEADWATER_API_TOKEN``) guards every route except the probes
(``/livez``, ``/readyz``) and ``/metrics`` (aggregate counts with bounded labels, for scrapers).
Without a token the server only binds to loopback (``headwater serve`` refuses otherwise).
Everything that leaves the server (SSE data, DLQ entries, job reasons) goes through the same
redaction as the logs.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime, and
# some of them close over the settings (page limits).
import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from headwater import registry
from headwater.compose import build_job_service, make_bus, open_metadata
from headwater.config import Settings
from headwater.errors import AdapterError, ConfigError, InputError
from headwater.jobs.service import JobService
from headwater.jobs.states import IllegalTransition, JobNotFound
from headwater.models import Job, JobStatus
from headwater.observability import Metrics, redact, register_secret
from headwater.ops.dead_letters import list_letters
from headwater.ops.index import has_index
from headwater.ops.search import Searcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- wire models (they are the OpenAPI schema) -----------------------------------------------------


class JobRequest(BaseModel):
    """A job to run: ``docs`` indexes ``source``; ``replay`` re-runs dead letters (``ids`` or all)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["docs", "replay"] = "docs"
    source: str | None = Field(None, min_length=1, max_length=4096, description="Folder or URL (docs)")
    ids: list[int] | None = Field(None, max_length=1000, description="Dead-letter ids (replay)")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first among queued jobs")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[int] | None = Field(None, max_length=1000, description="Entries to replay; omit for all")


class Created(BaseModel):
    id: str


class JobOut(BaseModel):
    id: str
    kind: str
    spec: dict[str, Any]
    priority: int
    status: JobStatus
    reason: str | None
    progress: dict[str, int]
    runs: int
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[JobOut]


class DeadLetterOut(BaseModel):
    id: int
    kind: str
    input_ref: str
    source: str
    stage: str
    error_type: str
    message: str
    attempts: int
    created_at: str
    replayed_at: str | None


class DeadLetterList(BaseModel):
    entries: list[DeadLetterOut]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    detail: str


QUERY_MAX_CHARS = 8192  # a query is a question, not a document (MiniLM reads 256 tokens of it)


class Hit(BaseModel):
    text: str
    score: float = Field(description="Cosine similarity, higher is closer")
    doc_id: str
    uri: str = Field(description="The document's path relative to the folder it was ingested from")
    offset: int = Field(description="Where the chunk starts in the document's normalized text, in characters")
    length: int
    source_start: int | None = Field(
        description="Where the chunk starts in the decoded file (for a PDF, in page `page`'s extracted text)"
    )
    source_end: int | None = Field(
        description="Where it ends (exclusive; for a PDF, in page `page_end`'s text); null: older index",
    )
    page: int | None = Field(description="PDFs: the page the chunk starts on, from 1; null otherwise")
    page_end: int | None = Field(description="PDFs: the page it ends on")
    chunk_id: str


class QueryOut(BaseModel):
    hits: list[Hit]
    embedder: str = Field(description="The embedder the index was built with and the query embedded by")
    took_ms: float


class Action(StrEnum):
    pause = "pause"
    resume = "resume"
    cancel = "cancel"


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Unreadable request (body is not JSON, bad Last-Event-ID)"},
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    404: {"model": Problem, "description": "No such job"},
    409: {"model": Problem, "description": "The job's status does not allow this"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": Problem, "description": "Invalid request: which field, and why"},
}
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: ERRORS[code] for code in (400, 401, 413, 422)},
    409: {"model": Problem, "description": "The home has no index yet (nothing was ingested)"},
    503: {"model": Problem, "description": "The index or its embedder cannot be opened or is unavailable"},
}


# --- the application -------------------------------------------------------------------------------


def create_app(
    settings: Settings, *, service: JobService | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """The API over one home. ``service`` and ``metrics`` are injectable for tests."""
    metrics = metrics or Metrics()
    service = service or build_job_service(settings, observers=[metrics.observe])
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    if token:
        register_secret(token)
    searcher = Searcher(settings, resident=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        warming = asyncio.create_task(_warm(searcher)) if has_index(settings) else None
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
                await asyncio.gather(warming, return_exceptions=True)
            await service.stop()
            await searcher.close()

    app = FastAPI(
        title="headwater",
        version="1",
        description="Ingestion jobs, their live events, the dead-letter queue, probes and metrics.",
        lifespan=lifespan,
    )
    app.state.service, app.state.metrics, app.state.settings = service, metrics, settings
    app.state.searcher = searcher
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    _error_handlers(app)
    _probe_routes(app, settings, service, metrics)
    _job_routes(app, settings, service, _auth(token))
    _dlq_routes(app, settings, service, _auth(token))
    _query_routes(app, settings, searcher, _auth(token))
    return app


def _auth(token: str | None) -> Callable[..., None]:
    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return  # loopback only: `serve` refuses a public bind without a token
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return require_token


def _error_handlers(app: FastAPI) -> None:
    def problem(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(_request: Request, exc: Exception) -> Response:
            return JSONResponse({"detail": redact(str(exc))}, status_code=status)

        return handle

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return JSONResponse({"detail": redact(detail)}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's 405 lists only the first route of a path; ``Allow`` must name them all."""
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            allowed = {
                method
                for route in app.router.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE
                for method in route.methods or ()
            }
            headers = {"Allow": ", ".join(sorted(allowed))}
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers=headers)
        return await http_exception_handler(request, exc)

    # one error shape everywhere ({"detail": "..."}), request validation included
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(JobNotFound, problem(404))
    app.add_exception_handler(IllegalTransition, problem(409))
    app.add_exception_handler(InputError, problem(422))
    app.add_exception_handler(ConfigError, problem(400))


def _probe_routes(app: FastAPI, settings: Settings, service: JobService, metrics: Metrics) -> None:
    @app.get("/livez", response_model=Health, tags=["probes"])
    async def livez() -> Health:
        """The process serves requests."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["probes"], responses={503: {"model": Health}})
    async def readyz() -> Response:
        """Every store (and the bus, when one is configured) answers; 503 ``degraded`` otherwise."""
        checks = await _readiness(settings, service)
        ok = all(v == "ok" for v in checks.values())
        body = Health(status="ok" if ok else "degraded", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus exposition; gauges read at scrape time."""
        with contextlib.suppress(Exception):  # a store that is down keeps its gauges
            metrics.set_jobs({status.value: n for status, n in (await service.counts()).items()})
        with contextlib.suppress(Exception):
            metrics.set_dlq_size((await _metadata_counts(settings))["dlq"])
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _job_routes(app: FastAPI, settings: Settings, service: JobService, auth: Callable[..., None]) -> None:
    guarded = [Depends(auth)]

    @app.post("/v1/jobs", status_code=201, response_model=Created, dependencies=guarded, tags=["jobs"],
              responses=ERRORS)  # fmt: skip
    async def submit(request: JobRequest) -> Created:
        """Queue a job; it runs with the server's home and settings."""
        spec: dict[str, Any] = {}
        if request.kind == "docs":
            spec["source"] = _source(request.source, settings.api_source_roots or [Path.cwd()])
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


def _dlq_routes(app: FastAPI, settings: Settings, service: JobService, auth: Callable[..., None]) -> None:
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


def _query_routes(app: FastAPI, settings: Settings, searcher: Searcher, auth: Callable[..., None]) -> None:
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


async def _warm(searcher: Searcher) -> None:
    """Open the index (load the model) at start-up, in the background: the first query does not
    pay for it. A failure is left for that query to report."""
    with contextlib.suppress(Exception):
        await searcher.warm()


# --- helpers ---------------------------------------------------------------------------------------


def _job_out(job: Job) -> JobOut:
    return JobOut.model_validate(redact(msgspec.to_builtins(job)))


def _source(source: str | None, roots: list[Path]) -> str:
    """A URL of a known scheme, or a local folder inside the allowed roots (a token holder must
    not be able to index the server's whole disk). Relative paths are resolved against the cwd."""
    if not source:
        msg = "a docs job needs 'source' (a folder or URL)"
        raise InputError(msg, field="source")
    if registry.scheme_of(source) != "file":
        try:
            registry.resolve("source", source)
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


async def _metadata_counts(settings: Settings) -> dict[str, int]:
    async with open_metadata(settings) as store:
        return await store.counts()


async def _readiness(settings: Settings, service: JobService) -> dict[str, str]:
    async def jobs() -> None:
        await service.list(limit=1)

    async def metadata() -> None:
        await _metadata_counts(settings)

    async def bus() -> None:
        client = make_bus(settings)
        await client.open()
        await client.close()

    probes = {"jobs": jobs, "metadata": metadata}
    if not settings.bus.startswith("memory://"):
        probes["bus"] = bus
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            async with asyncio.timeout(3):
                await probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 (any failure is the answer: not ready, and why)
            checks[name] = redact(f"{type(exc).__name__}: {exc}")[:300]
    return checks


class BodyLimit:
    """413 for a body over ``max_bytes``, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    """A control-flow signal inside BodyLimit, never surfaced."""


async def _too_large(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": f"request body over {max_bytes} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["create_app"]
