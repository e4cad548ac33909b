"""Protection for external embedders: an adaptive token bucket and a circuit breaker.

The bucket's rate adapts (seed 004, DESIGN §4.6): it halves when the queue downstream of the
embedder is more than 80% full or the server answers 429 (and pauses until ``Retry-After``), and
grows by a fifth when that queue is less than 30% full, always within ``[min, max]``. The breaker
stops calling a server that keeps failing: after K consecutive failures it opens and raises
``CircuitOpenError``, which tells the job to pause with a reason instead of burning retries; after
a cool-down one trial call is let through (half-open) and a success closes it again.

Both take an injectable clock (and the bucket an injectable sleep), so tests are instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from headwater.errors import EmbedderUnavailable
from headwater.presets import PRESETS

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Bounds and rules of the adaptive bucket; rates are requests per second."""

    rate_per_second: float = 10.0
    burst: float = 10.0
    min_rate_per_second: float = 0.5
    max_rate_per_second: float = 100.0
    slow_down_above: float = 0.8
    speed_up_below: float = 0.3
    decrease_factor: float = 0.5
    increase_factor: float = 1.2
    adjust_interval_seconds: float = 1.0
    """Queue depth moves the rate at most once per interval, so a caller reporting the depth on
    every request does not collapse the rate to its minimum within a burst."""
    max_pause_seconds: float = 300.0
    """Longest ``Retry-After`` honoured: a server asking for more is treated as asking for this."""

    def __post_init__(self) -> None:
        if not 0 < self.min_rate_per_second <= self.max_rate_per_second:
            low, high = self.min_rate_per_second, self.max_rate_per_second
            msg = f"rate limiter: need 0 < min_rate_per_second ({low}) <= max_rate_per_second ({high})"
            raise ValueError(msg)
        if self.burst < 1:
            msg = f"rate limiter: burst must be at least 1, not {self.burst}"
            raise ValueError(msg)


# The limiter bounds of each named profile; the values live in headwater.presets with the rest of it.
LIMITER_PRESETS: Mapping[str, LimiterConfig] = MappingProxyType(
    {name: LimiterConfig(**preset.limiter) for name, preset in PRESETS.items()}
)


class AdaptiveRateLimiter:
    """A token bucket whose refill rate adapts to congestion (AIMD-style, within bounds).

    ``acquire`` waits for a token (and for the end of a ``Retry-After`` pause); ``observe_queue``
    and ``throttled`` are the two feedback signals. All state changes are synchronous, so
    concurrent tasks on one event loop share a limiter without locks.
    """

    def __init__(
        self,
        config: LimiterConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config or LimiterConfig()
        self._clock = clock
        self._sleep = sleep
        self.rate = self._bounded(self.config.rate_per_second)
        self.tokens = self.config.burst
        self.paused_until = clock()
        self._refilled_at = clock()
        self._adjusted_at = float("-inf")

    def _refill(self, now: float) -> None:
        start = max(self._refilled_at, self.paused_until) if now >= self.paused_until else now
        self.tokens = min(self.config.burst, self.tokens + max(0.0, now - start) * self.rate)
        self._refilled_at = now

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` now and return 0, or return the seconds to wait before trying again."""
        if tokens > self.config.burst:
            msg = f"rate limiter: cannot take {tokens} tokens at once with a burst of {self.config.burst}"
            raise ValueError(msg)
        now = self._clock()
        if now < self.paused_until:
            return self.paused_until - now
        self._refill(now)
        if self.tokens >= tokens - _EPSILON:  # float dust must not cost a sleep
            self.tokens = max(0.0, self.tokens - tokens)
            return 0.0
        return (tokens - self.tokens) / self.rate

    async def acquire(self, tokens: float = 1.0) -> None:
        while (wait := self.try_acquire(tokens)) > 0:
            await self._sleep(wait)

    def observe_queue(self, depth: int, capacity: int) -> float:
        """Adapt to the fill level of the queue downstream; returns the (maybe new) rate."""
        now = self._clock()
        if capacity <= 0 or now - self._adjusted_at < self.config.adjust_interval_seconds:
            return self.rate
        fill = depth / capacity
        if fill > self.config.slow_down_above:
            self._set_rate(self.rate * self.config.decrease_factor, now)
        elif fill < self.config.speed_up_below:
            self._set_rate(self.rate * self.config.increase_factor, now)
        return self.rate

    def throttled(self, retry_after_seconds: float | None = None) -> None:
        """The server said 429 (or 503): halve the rate and pause everyone until ``Retry-After``."""
        now = self._clock()
        self._set_rate(self.rate * self.config.decrease_factor, now)
        if retry_after_seconds is not None and retry_after_seconds > 0:
            pause = min(retry_after_seconds, self.config.max_pause_seconds)
            self.paused_until = max(self.paused_until, now + pause)
        self.tokens = min(self.tokens, 1.0)  # after the pause: one probe, then the lower rate

    def _set_rate(self, rate: float, now: float) -> None:
        self._refill(now)  # tokens earned at the old rate stay earned
        self.rate = self._bounded(rate)
        self._adjusted_at = now

    def _bounded(self, rate: float) -> float:
        return min(max(rate, self.config.min_rate_per_second), self.config.max_rate_per_second)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(EmbedderUnavailable):
    """The backend is down: stop the run, or pause the job (``reason`` says why), rather than
    retry or dead-letter each input (a later run redoes them)."""

    def __init__(self, message: str, *, name: str, reason: str, retry_in_seconds: float) -> None:
        super().__init__(message)
        self.name = name
        self.reason = reason
        self.retry_in_seconds = retry_in_seconds


class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures → half-open after
    ``cooldown_seconds`` (one trial call) → closed on its success, open again on its failure."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            msg = f"circuit breaker {name}: failure_threshold must be at least 1, not {failure_threshold}"
            raise ValueError(msg)
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.last_failure = ""
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.on_change: Callable[[BreakerState, str], None] | None = None  # (new state, last failure)

    def _move(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state, self.last_failure)

    def check(self) -> None:
        """Call before each request: raises CircuitOpenError while the circuit is open."""
        now = self._clock()
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.cooldown_seconds:
            self._trial_in_flight = False
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True  # exactly one trial call probes the backend
            return
        raise self.open_error()

    def open_error(self) -> CircuitOpenError:
        """The error that tells the caller to pause (raised by ``check``, and by a caller whose
        failure just opened the circuit, so the job pauses without one more round of retries)."""
        retry_in = max(0.0, self._opened_at + self.cooldown_seconds - self._clock())
        reason = f"{self.failures} consecutive failures, last: {self.last_failure}"
        msg = f"{self.name} is unavailable ({reason}); pause the job and resume in {retry_in:.0f} s or later"
        return CircuitOpenError(msg, name=self.name, reason=reason, retry_in_seconds=retry_in)

    def record_success(self) -> None:
        self.failures, self._trial_in_flight = 0, False
        self._move(BreakerState.CLOSED)

    def record_failure(self, reason: str) -> None:
        self.failures += 1
        self.last_failure = reason
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._opened_at, self._trial_in_flight = self._clock(), False
            self._move(BreakerState.OPEN)
