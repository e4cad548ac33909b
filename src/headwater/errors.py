"""One exception tree for the whole project.

    HeadwaterError
    ├── ConfigError            bad settings or URL; the CLI exits 3
    ├── HomeBusy               another process writes the home and the caller won't wait; exits 4
    ├── NoHome                 a command that reads a home got a folder that is none; exits 2
    ├── InputError             bad input; goes straight to the DLQ, never retried
    └── AdapterError           a port's backend failed
        ├── RetryableError     timeouts, 429, lost connections: retried with backoff
        ├── PermanentError     the backend refused for good: to the DLQ
        ├── EmbedderUnavailable the embedder's circuit opened: the run stops (exit 5), nothing
        │                      is dead-lettered for it, and the same command continues later
        └── StoreUnavailable   a store (vector index, database) stayed unreachable through the
                               retries: the same as for the embedder

Adapters translate vendor exceptions at their boundary (``raise RetryableError(msg) from exc``);
the engine decides retry vs DLQ by class alone. Messages name the file or URL, the field and the
reason, and never carry credentials.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator


class HeadwaterError(Exception):
    """Root of every error headwater raises on purpose."""


class ConfigError(HeadwaterError):
    """The configuration cannot work: unknown scheme, missing extra, incompatible store."""


class NoHome(HeadwaterError):
    """A command that reads a home was pointed at a folder that is none (a mistyped --home would
    otherwise look like an empty index, and be created as one)."""


class HomeBusy(HeadwaterError):
    """Another process is writing this home, and the caller asked not to wait for it."""


class InputError(HeadwaterError):
    """One input is bad (unreadable, undecodable, too large); it is dead-lettered, not retried."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AdapterError(HeadwaterError):
    """A backend behind a port failed."""


class RetryableError(AdapterError):
    """A failure worth retrying with backoff (timeouts, throttling, lost connections)."""


class PermanentError(AdapterError):
    """A backend failure that retrying will not fix."""


class StoreUnavailable(RetryableError):
    """A store's connection failed (a lost connection, a server restarting): retried with backoff
    like any RetryableError; once the retries are spent, not the documents' fault either: the run
    stops instead of dead-lettering them (exit 5), and the same command continues later."""


class EmbedderUnavailable(RetryableError):
    """The embedder stayed down until its circuit breaker opened. Not the documents' fault: a run
    stops instead of dead-lettering them, and a job pauses with this as its reason."""


def disk_full(exc: BaseException) -> str | None:
    """Where a "disk full" anywhere in the error's chain happened (the file or store it names,
    else its message), or None. A full disk stops a run (the documents are not at fault, so none
    is dead-lettered). Stores say it their own way: OSError ENOSPC or EDQUOT, SQLite's "database
    or disk is full", Lance's RuntimeError text ("No space left on device (os error 28)"); the
    adapters turn theirs into an OSError ENOSPC naming the file or folder, found first here."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = cause.strerror or str(cause)
            if not cause.filename:
                return reason
            return str(cause.filename) if cause.errno == errno.ENOSPC else f"{cause.filename} ({reason})"
        text = str(cause)
        if any(marker in text for marker in _DISK_FULL_TEXTS):
            return text.splitlines()[0][:300]
    return None


_DISK_FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
