"""The application: lifespan (job service, index warm-up), auth, error handlers, probes."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from headwater.compose import build_job_service, make_bus, open_metadata, resolve_feature_set
from headwater.config import Settings
from headwater.errors import ConfigError, InputError
from headwater.jobs.service import JobService
from headwater.jobs.states import IllegalTransition, JobNotFound
from headwater.observability import Metrics, redact, register_secret
from headwater.ops.index import has_index
from headwater.ops.search import Searcher
from headwater.server.body_limit import BodyLimit
from headwater.server.routes import dlq_routes, job_routes, query_routes, warm
from headwater.server.schemas import Health


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
        warming = asyncio.create_task(warm(searcher)) if has_index(settings) else None
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
    job_routes(app, settings, service, _auth(token))
    dlq_routes(app, settings, service, _auth(token))
    query_routes(app, settings, searcher, _auth(token))
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
        with contextlib.suppress(Exception):
            await _held_gauges(settings, metrics)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


async def _held_gauges(settings: Settings, metrics: Metrics) -> None:
    """The held set of each feature set declared (or defaulted) with policy ``hold``: what
    ``features late --prometheus`` prints, at scrape time (reads the offline late dataset)."""
    from headwater.ops.release import held_set

    names = dict.fromkeys([settings.feature_set, *settings.feature_sets])
    for name in names:
        if resolve_feature_set(settings, name).late_policy != "hold":
            continue
        async with asyncio.timeout(10):
            held = await held_set(settings, name, limit=0)
        metrics.set_held_events(name, held.held_events, (held.oldest or {}).get("event_time"))


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
