"""How a command ends: one clear line and a documented exit code, never a traceback.

Exit codes (the README lists the same table):

    0    the run completed (failures are in the DLQ and the summary)
    1    a run error, ``--fail-on-error`` saw a failure, or ``verify`` found disagreements
    2    usage error (an unknown option, a bad argument value)
    3    configuration error (a setting, an environment variable, headwater.toml)
    4    the home is being written by another process and ``--no-wait`` was given
    5    the embedder or a store is unavailable: the run stopped, nothing was dead-lettered for it
    6    no space left on device: the run stopped, nothing half-written is kept
    70   an internal error (a bug: re-run with ``--debug`` and report the traceback)
    130  stopped by SIGINT (Ctrl-C);  143  stopped by SIGTERM

Stop requests reach a run as the cancellation of its main task: SIGINT and SIGTERM both cancel
it, the pipeline settles (the batch in flight, adapters closed), and the command prints a line
saying what happened and how to continue. A second signal while that is under way exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from headwater.config import Settings
from headwater.errors import (
    ConfigError,
    EmbedderUnavailable,
    HeadwaterError,
    HomeBusy,
    NoHome,
    StoreUnavailable,
    disk_full,
)

T = TypeVar("T")

EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_BUSY, EXIT_EMBEDDER, EXIT_DISK_FULL = 1, 2, 3, 4, 5, 6
EXIT_INTERNAL = 70
EXIT_SIGNAL_BASE = 128
DOCUMENTED_EXIT_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 70, 130, 143})

err = Console(stderr=True, soft_wrap=True, highlight=False)
_debug = False


def set_debug(on: bool) -> None:
    """``--debug`` / ``HEADWATER_DEBUG=1``: errors are re-raised with their traceback."""
    global _debug  # noqa: PLW0603 (one process, one command: the flag of this invocation)
    _debug = on or os.environ.get("HEADWATER_DEBUG", "").lower() in {"1", "true", "yes", "on"}


class Interrupted(Exception):
    """A stop signal ended the run after it settled; ``detail`` says how far it got."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.detail = detail


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` where SIGINT and SIGTERM both cancel the main task (so every stop request
    takes the same, tested path: cancellation) and end in Interrupted instead of a traceback."""
    received: list[int] = []

    async def guarded() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            if received:  # asked twice: the user does not want to wait for the clean stop
                os._exit(EXIT_SIGNAL_BASE + received[0])
            received.append(signum)
            err.print(f"stopping ({signal.Signals(signum).name}): finishing the batch in flight …")
            if task is not None:
                task.cancel()

        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
                pass
        try:
            return await main
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if received:
            raise Interrupted(received[0]) from None
        raise Interrupted(signal.SIGINT) from None


def run_guarded(fn: Callable[[], T]) -> T:
    """Turn every way a command can fail into one line and its exit code."""
    try:
        return fn()
    except (typer.Exit, typer.Abort):
        raise
    except BaseException as exc:  # this is the one place that decides how a command ends
        code, line = describe(exc)
        if _debug and code not in (0, EXIT_SIGNAL_BASE + signal.SIGINT, EXIT_SIGNAL_BASE + signal.SIGTERM):
            raise
        err.print(line)
        raise typer.Exit(code) from None


def describe(exc: BaseException) -> tuple[int, str]:  # noqa: PLR0911 (one return per exit code)
    """The exit code and the one line for an error that ended a command."""
    if isinstance(exc, Interrupted):
        detail = f": {exc.detail}" if exc.detail else ""
        line = (
            f"[yellow]interrupted[/] ({exc}){escape(detail)}; nothing half-written is kept: "
            "run the same command again to continue"
        )
        return EXIT_SIGNAL_BASE + exc.signum, line
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGNAL_BASE + signal.SIGINT, "[yellow]interrupted[/] (SIGINT)"
    if (full := disk_full(exc)) is not None:
        line = (
            f"[red]no space left on device[/]: {escape(full)}; the run stopped and nothing "
            "half-written is kept: free some space and run the same command again"
        )
        return EXIT_DISK_FULL, line
    if isinstance(exc, NoHome):
        return EXIT_USAGE, f"[red]usage error:[/] {escape(str(exc))}"
    if isinstance(exc, HomeBusy):
        return EXIT_BUSY, f"[red]busy:[/] {escape(str(exc))}"
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, f"[red]configuration error:[/] {escape(str(exc))}"
    if isinstance(exc, EmbedderUnavailable):
        line = (
            f"[red]embedder unavailable:[/] {escape(str(exc))}; the run stopped and nothing was "
            "dead-lettered for it: run the same command again once the embedder is back"
        )
        return EXIT_EMBEDDER, line
    if isinstance(exc, StoreUnavailable):
        line = (
            f"[red]store unavailable:[/] {escape(str(exc))}; the run stopped and nothing was "
            "dead-lettered for it: run the same command again once the store is back"
        )
        return EXIT_EMBEDDER, line
    if isinstance(exc, HeadwaterError):
        return EXIT_ERROR, f"[red]error:[/] {escape(str(exc))}"
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
        return code, ""
    where = _where(exc)
    line = (
        f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))[:500]}{where} "
        "(a bug: run it again with --debug and report the traceback)"
    )
    return EXIT_INTERNAL, line


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    return f" at {Path(last.tb_frame.f_code.co_filename).name}:{last.tb_lineno}"


def exit_for_uncaught(exc: BaseException) -> int:
    """``main()``'s last resort, for what escaped a command's own guard (option parsing,
    settings read by a callback): the same one line and code."""
    if _debug:
        raise exc
    code, line = describe(exc)
    if line:
        err.print(line)
    return code


HOME_FILES = ("index.json", "state.db", "features.db", "jobs.db")


def existing_home(settings: Settings) -> Settings:
    """For commands that only read a home (query, status, export, dlq, features): refuse a folder
    that is not one instead of creating an empty home there and answering from it."""
    home = settings.home
    external = settings.metadata_store is not None or settings.online_store is not None
    if not external and not any((home / name).exists() for name in HOME_FILES):
        msg = (
            f"no headwater home at {home}: nothing was ingested there (check --home or "
            "HEADWATER_HOME; `headwater ingest` creates a home)"
        )
        raise NoHome(msg)
    return settings
