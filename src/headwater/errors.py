"""One exception tree for the whole project.

    HeadwaterError
    ├── ConfigError            bad settings or URL; the CLI exits 3
    ├── InputError             bad input; goes straight to the DLQ, never retried
    └── AdapterError           a port's backend failed
        ├── RetryableError     timeouts, 429, lost connections: retried with backoff
        └── PermanentError     the backend refused for good: to the DLQ

Adapters translate vendor exceptions at their boundary (``raise RetryableError(msg) from exc``);
the engine decides retry vs DLQ by class alone. Messages name the file or URL, the field and the
reason, and never carry credentials.
"""

from __future__ import annotations


class HeadwaterError(Exception):
    """Root of every error headwater raises on purpose."""


class ConfigError(HeadwaterError):
    """The configuration cannot work: unknown scheme, missing extra, incompatible store."""


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
