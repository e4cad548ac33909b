"""One writer at a time per embedded home: an OS-level lock held for the whole run.

Two runs writing one LanceDB table and one state database at once (a cron overlap, a command
started in two terminals, two jobs of one server) duplicated vectors and ended in a Lance commit
conflict. Every document writer (``ingest docs``, jobs, DLQ replays, ``verify --repair``,
``optimize``, each batch of a document worker) and every signal backfill of a feature set takes
its lock first; readers (``query``, ``status``, ``export``) never do, so they keep working
during a run.

``flock`` on a file in the home: the kernel releases it when its holder dies, however it dies
(``kill -9`` included), so a stale lock is recovered without any clean-up. Two open file
descriptions conflict even within one process, so two jobs of one server exclude each other
the same way two processes do. The holder writes who it is (pid, command, since when) into the
lock file, for the message a waiting writer prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from headwater.errors import ConfigError, HomeBusy
from headwater.models import sha256_hex
from headwater.redaction import redact_text

POLL_SECONDS = 0.1


def feature_set_lock(feature_set: str) -> str:
    """The writer lock of one feature set in a home: backfills and releases of it take it."""
    return f"signals-{sha256_hex(feature_set)[:12]}"


def lock_path(home: Path, name: str = "documents") -> Path:
    return home / "locks" / f"{name}.lock"


def describe_holder(path: Path) -> str:
    """Who holds the lock, from what the holder wrote into it (best effort: it may be mid-write)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}) since {info.get('since')}"


@contextlib.asynccontextmanager
async def home_lock(
    home: Path,
    name: str = "documents",
    *,
    wait: bool = True,
    on_wait: Callable[[str], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    """Hold the writer lock ``name`` of ``home`` for the body.

    Args:
        wait: if another process holds it, wait for it (``on_wait`` is called once, with who
            holds it); otherwise raise HomeBusy at once (``--no-wait``).
    """
    path = lock_path(home, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        msg = f"cannot create the lock file {path}: {exc.strerror or exc} (is --home writable?)"
        raise ConfigError(msg) from exc
    try:
        await _acquire(fd, path, home, wait=wait, on_wait=on_wait)
        _write_holder(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def _acquire(
    fd: int,
    path: Path,
    home: Path,
    *,
    wait: bool,
    on_wait: Callable[[str], Awaitable[None]] | None,
) -> None:
    told = False
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(path)
            if not wait:
                msg = (
                    f"the home {home} is being written by {holder}; wait for it to finish, or run "
                    "without --no-wait to wait for it"
                )
                raise HomeBusy(msg) from None
            if not told and on_wait is not None:
                told = True
                await on_wait(holder)
            # Polled rather than a blocking flock in a thread: a stop request must end the wait.
            await asyncio.sleep(min(POLL_SECONDS * (1 + (time.monotonic() - started) / 10), 1.0))
        else:
            return


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": redact_text(" ".join(["headwater", *sys.argv[1:4]]))[:200],
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
