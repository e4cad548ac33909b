"""The adaptive token bucket and the circuit breaker, on a fake clock (no real sleeps)."""

from __future__ import annotations

import pytest

from headwater.errors import RetryableError
from headwater.pipeline.ratelimit import (
    LIMITER_PRESETS,
    AdaptiveRateLimiter,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    LimiterConfig,
)
from headwater.testing import FakeClock

START = 1000.0  # where these tests' clock has always started (a monotonic clock is never at 0)


def limiter(clock: FakeClock, **config: float) -> AdaptiveRateLimiter:
    base: dict[str, float] = {
        "rate_per_second": 10,
        "burst": 2,
        "min_rate_per_second": 1,
        "max_rate_per_second": 40,
        "adjust_interval_seconds": 1,
    }
    return AdaptiveRateLimiter(LimiterConfig(**{**base, **config}), clock=clock, sleep=clock.sleep)


# -- token bucket ----------------------------------------------------------------------------------
def test_burst_is_available_at_once_then_tokens_refill_at_the_rate() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    assert rl.try_acquire() == 0 and rl.try_acquire() == 0
    assert rl.try_acquire() == pytest.approx(0.1)  # 1 token at 10/s
    clock.now += 0.05
    assert rl.try_acquire() == pytest.approx(0.05)
    clock.now += 0.05
    assert rl.try_acquire() == 0


def test_tokens_never_exceed_the_burst() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    clock.now += 3600
    assert [rl.try_acquire() for _ in range(2)] == [0, 0]
    assert rl.try_acquire() > 0


async def test_acquire_waits_exactly_as_long_as_the_rate_requires() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    for _ in range(12):
        await rl.acquire()
    assert sum(clock.slept) == pytest.approx(1.0)  # 2 free, then 10 at 10/s


def test_taking_more_than_the_burst_at_once_is_refused() -> None:
    with pytest.raises(ValueError, match="burst of 2"):
        limiter(FakeClock(START)).try_acquire(3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_rate_per_second": 0}, "0 < min_rate"),
        ({"min_rate_per_second": 50}, "<= max_rate"),
        ({"burst": 0.5}, "burst must be"),
    ],
)
def test_invalid_bounds_are_refused(change: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        limiter(FakeClock(START), **change)


def test_initial_rate_is_clamped_into_the_bounds() -> None:
    assert limiter(FakeClock(START), rate_per_second=100).rate == 40
    assert limiter(FakeClock(START), rate_per_second=0.1).rate == 1


# -- queue depth feedback -------------------------------------------------------------------------
def test_above_80_percent_full_halves_the_rate() -> None:
    rl = limiter(FakeClock(START))
    assert rl.observe_queue(81, 100) == 5


def test_below_30_percent_full_raises_the_rate_by_a_fifth() -> None:
    rl = limiter(FakeClock(START))
    assert rl.observe_queue(29, 100) == pytest.approx(12)


@pytest.mark.parametrize("depth", [30, 55, 80])
def test_between_the_thresholds_the_rate_holds(depth: int) -> None:
    assert limiter(FakeClock(START)).observe_queue(depth, 100) == 10


def test_adjustments_happen_at_most_once_per_interval() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    assert rl.observe_queue(100, 100) == 5
    assert rl.observe_queue(100, 100) == 5  # same instant: ignored
    clock.now += 0.99
    assert rl.observe_queue(100, 100) == 5
    clock.now += 0.01
    assert rl.observe_queue(100, 100) == 2.5


def test_the_rate_never_leaves_its_bounds() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    for _ in range(20):
        clock.now += 1
        rl.observe_queue(100, 100)
    assert rl.rate == 1  # the minimum
    for _ in range(40):
        clock.now += 1
        rl.observe_queue(0, 100)
    assert rl.rate == 40  # the maximum


def test_an_unknown_capacity_changes_nothing() -> None:
    assert limiter(FakeClock(START)).observe_queue(5, 0) == 10


def test_tokens_earned_before_a_rate_change_are_kept() -> None:
    clock = FakeClock(START)
    rl = limiter(clock, burst=10)
    for _ in range(10):
        rl.try_acquire()
    clock.now += 0.5  # 5 tokens at 10/s
    rl.observe_queue(100, 100)  # now 5/s
    assert rl.tokens == pytest.approx(5)


# -- 429 / Retry-After ----------------------------------------------------------------------------
async def test_429_halves_the_rate_and_pauses_until_retry_after() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    rl.throttled(retry_after_seconds=3)
    assert rl.rate == 5
    assert rl.try_acquire() == pytest.approx(3)
    await rl.acquire()
    assert clock.now == pytest.approx(1003)  # one probe right after the pause...
    assert rl.try_acquire() == pytest.approx(0.2)  # ...then the halved rate, no burst


def test_no_tokens_accrue_during_a_pause() -> None:
    clock = FakeClock(START)
    rl = limiter(clock, burst=5)
    rl.throttled(retry_after_seconds=10)
    clock.now += 10
    assert rl.try_acquire() == 0
    assert rl.try_acquire() > 0


def test_429_without_retry_after_only_halves_the_rate() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    rl.throttled()
    assert (rl.rate, rl.try_acquire()) == (5, 0)


def test_429_respects_the_minimum_rate_and_the_longest_pause() -> None:
    clock = FakeClock(START)
    rl = limiter(clock, max_pause_seconds=60)
    for _ in range(10):
        rl.throttled()
    assert rl.rate == 1
    rl.throttled(retry_after_seconds=86_400)
    assert rl.try_acquire() == pytest.approx(60)


def test_a_shorter_retry_after_never_cuts_a_longer_pause() -> None:
    clock = FakeClock(START)
    rl = limiter(clock)
    rl.throttled(retry_after_seconds=10)
    rl.throttled(retry_after_seconds=1)
    assert rl.try_acquire() == pytest.approx(10)


def test_presets_are_valid_and_ordered() -> None:
    rates = [LIMITER_PRESETS[name].max_rate_per_second for name in ("local", "standard", "high-throughput")]
    assert rates == sorted(rates)


# -- circuit breaker ------------------------------------------------------------------------------
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        "embedder http://127.0.0.1:9/v1/embeddings", failure_threshold=3, cooldown_seconds=30, clock=clock
    )


def test_breaker_opens_after_k_consecutive_failures() -> None:
    b = breaker(FakeClock(START))
    for _ in range(2):
        b.record_failure("HTTP 503")
        b.check()
    b.record_failure("HTTP 503")
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        b.check()
    err = info.value
    assert isinstance(err, RetryableError)
    assert "127.0.0.1:9" in str(err) and "pause the job" in str(err) and "HTTP 503" in err.reason
    assert err.retry_in_seconds == 30


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    b = breaker(FakeClock(START))
    b.record_failure("timeout")
    b.record_failure("timeout")
    b.record_success()
    b.record_failure("timeout")
    b.check()
    assert b.state is BreakerState.CLOSED


def test_after_the_cooldown_one_trial_call_passes_and_its_success_closes() -> None:
    clock = FakeClock(START)
    b = breaker(clock)
    for _ in range(3):
        b.record_failure("HTTP 500")
    clock.now += 29.9
    with pytest.raises(CircuitOpenError):
        b.check()
    clock.now += 0.1
    b.check()  # the trial
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.check()  # only one trial at a time
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.failures == 0
    b.check()


def test_a_failed_trial_opens_the_circuit_for_another_cooldown() -> None:
    clock = FakeClock(START)
    b = breaker(clock)
    for _ in range(3):
        b.record_failure("HTTP 500")
    clock.now += 30
    b.check()
    b.record_failure("still down")
    assert b.state is BreakerState.OPEN
    clock.now += 29
    with pytest.raises(CircuitOpenError, match="still down"):
        b.check()
    clock.now += 1
    b.check()
    assert b.state is BreakerState.HALF_OPEN


def test_breaker_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
