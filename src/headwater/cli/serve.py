"""CLI for operating headwater as a service: ``serve`` (the HTTP API) and ``jobs …`` (the same job
commands, on the home's job store, without a server in between).

``jobs pause|cancel`` from another process is seen by a running server within a second: it polls
the store for such requests, so the two can be mixed freely on one home.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer

from headwater.cli.app import app, out
from headwater.cli.guard import Interrupted, run_async, run_guarded
from headwater.cli.options import FeatureSetOpt, HomeOpt, JsonOpt
from headwater.config import Settings, load_settings
from headwater.errors import ConfigError, HeadwaterError

T = TypeVar("T")


jobs_app = typer.Typer(
    no_args_is_help=True, help="Ingestion jobs: submit, list, status, pause, resume, cancel."
)


app.add_typer(jobs_app, name="jobs")


@app.command("serve")
def serve(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (non-loopback needs HEADWATER_API_TOKEN)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port")] = 8080,
    max_jobs: Annotated[
        int | None,
        typer.Option("--max-jobs", min=1, max=1000, help="Jobs run at once [HEADWATER_MAX_CONCURRENT_JOBS]"),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="console | json [HEADWATER_LOG_FORMAT]")
    ] = None,
) -> None:
    """Serve the HTTP API: jobs, their live events (SSE), the DLQ, /metrics, /livez, /readyz.

    The bearer token comes from HEADWATER_API_TOKEN only (never a flag: flags show in `ps`).
    SIGTERM and SIGINT shut it down gracefully (uvicorn's own handling: requests in flight finish,
    the job service stops); the command then ends with 143 or 130 and one line.
    """
    settings = run_guarded(
        lambda: _checked_bind(
            load_settings(home=home, max_concurrent_jobs=max_jobs, log_format=log_format), host
        )
    )
    run_guarded(lambda: _serve(settings, host, port))


def _serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from headwater.observability import configure_logging
    from headwater.server import create_app

    configure_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # uvicorn takes SIGINT/SIGTERM while it runs and raises them again once it has shut down: these
    # handlers, restored by it, note them instead of dying by SIGTERM or a KeyboardInterrupt.
    received: list[int] = []
    noted = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in _STOP}
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind; its log line said why
        msg = f"the server did not start on {host}:{port} (see the line above): pick another --port or host"
        raise HeadwaterError(msg) from exc
    finally:
        for sig, handler in noted.items():
            signal.signal(sig, handler)
    if received:
        raise Interrupted(received[0], "the server shut down")
    if not server.started:
        msg = f"the server did not start on {host}:{port} (its log says why): fix that and run it again"
        raise HeadwaterError(msg)


_STOP = (signal.SIGINT, signal.SIGTERM)


def _checked_bind(settings: Settings, host: str) -> Settings:
    if settings.api_token is None and not _is_loopback(host):
        msg = f"refusing to serve on {host} without a token: set HEADWATER_API_TOKEN (or bind 127.0.0.1)"
        raise ConfigError(msg)
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- jobs ------------------------------------------------------------------------------------------


def _with_service(
    home: Path | None, work: Callable[[Any], Awaitable[T]], settings: Settings | None = None
) -> T:
    from headwater.compose import build_job_service

    async def run() -> T:
        service = build_job_service(settings or load_settings(home=home, index=False))
        await service.open()
        try:
            return await work(service)
        finally:
            await service.store.close()

    return run_guarded(lambda: run_async(run()))


def _print_job(job: Any, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(msgspec.to_builtins(job)) + "\n")
        return
    progress = " ".join(f"{k}={v}" for k, v in sorted(job.progress.items()))
    reason = f"  ({job.reason})" if job.reason else ""
    out.print(f"{job.id}\t{job.kind}\t{job.status}\t{progress}{reason}", markup=False, highlight=False)


class JobKind(StrEnum):
    docs = "docs"
    signals = "signals"


@jobs_app.command("submit")
def jobs_submit(
    source: Annotated[str, typer.Argument(help="Folder or URL to index (docs), file or folder (signals)")],
    home: HomeOpt = None,
    priority: Annotated[int, typer.Option(min=-1000, max=1000, help="Higher runs first")] = 0,
    kind: Annotated[
        JobKind, typer.Option("--kind", help="docs (index) or signals (backfill)")
    ] = JobKind.docs,
    feature_set: FeatureSetOpt = None,
) -> None:
    """Queue a job; a running `headwater serve` (or `jobs run`) on this home picks it up."""
    source = run_guarded(lambda: _local_source(source))
    spec = {
        "source": source,
        **({"feature_set": feature_set} if feature_set and kind is JobKind.signals else {}),
    }
    job_id = _with_service(home, lambda s: s.submit(kind.value, spec, priority))
    sys.stdout.write(job_id + "\n")


def _local_source(source: str) -> str:
    """A folder is queued by its absolute path (it need not exist yet: the job fails if it still
    does not when it runs)."""
    return source if "://" in source else str(Path(source).resolve())


@jobs_app.command("run")
def jobs_run(
    home: HomeOpt = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, max=1000, help="Jobs run at once")
    ] = None,
) -> None:
    """Run queued jobs without a server, until none is queued or running (cron, CI)."""
    from headwater.compose import build_job_service
    from headwater.models import JobStatus

    async def run() -> list[Any]:
        service = build_job_service(load_settings(home=home, max_concurrent_jobs=max_jobs))
        busy = [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING, JobStatus.CANCELLING]
        await service.start()  # jobs whose runner died (its lease expired) are recovered here
        try:
            todo = [job.id for job in await service.list(busy, limit=100_000)]
            # other processes (jobs submit/pause) write to the same store: poll it, like the server
            while await service.list(busy, limit=1):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            return [await service.get(job_id) for job_id in todo]
        finally:
            await service.stop()

    jobs = run_guarded(lambda: run_async(run()))
    for job in jobs:
        _print_job(job, json_out=False)
    if any(job.status == "failed" for job in jobs):
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many")] = 100,
) -> None:
    """Jobs by priority, then age."""
    for job in _with_service(home, lambda s: s.list(limit=limit)):
        _print_job(job, json_out)


def _job_command(name: str, method: str, doc: str) -> None:
    """``jobs NAME ID``: one JobService call on one job, printed like ``jobs status``."""

    def command(job_id: str, home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        _print_job(_with_service(home, lambda s: getattr(s, method)(job_id)), json_out)

    command.__doc__ = doc
    jobs_app.command(name)(command)


for _name, _method, _doc in (
    ("status", "get", "One job: status, reason, progress counts."),
    ("pause", "pause", "Pause: a queued job at once, a running one when its run stops (PAUSING meanwhile)."),
    ("resume", "resume", "Queue a paused job again; finished documents are not redone."),
    ("cancel", "cancel", "Stop a job for good (what it indexed stays indexed)."),
):
    _job_command(_name, _method, _doc)
