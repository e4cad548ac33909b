"""Retry with backoff and jitter for RetryableError (an embedder's 429, a bus that is restarting)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from headwater.errors import RetryableError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for RetryableError; anything else is not retried."""

    attempts: int = 5
    initial_seconds: float = 0.2
    max_seconds: float = 30.0


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy = RetryPolicy()) -> T:
    from tenacity import (  # lazily: ~0.05 s of import a no-change re-run never needs
        AsyncRetrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential_jitter,
    )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_seconds, max=policy.max_seconds, jitter=policy.initial_seconds
        ),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    msg = "unreachable"
    raise AssertionError(msg)
