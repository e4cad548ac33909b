"""OpenAI-compatible embeddings over HTTP (extra ``[openai]``): OpenAI itself, Ollama, vLLM, TEI.

URLs:
    ``openai://text-embedding-3-small`` → https://api.openai.com/v1/embeddings, key from
    ``OPENAI_API_KEY``; ``?dimensions=N`` is sent to OpenAI (shortened text-embedding-3 vectors).
    ``http://127.0.0.1:11434/v1/embeddings?model=nomic-embed-text&dimensions=768`` → that server;
    ``dimensions`` is required and only checked against answers (servers differ on the parameter);
    ``key_env=VAR`` sends ``Bearer $VAR``.
    Options for both: ``batch`` (inputs per request, 128), ``timeout`` (seconds, 30), ``attempts``
    (per request, 4), ``preset`` (rate limiter profile; else the ``preset`` setting, else
    ``standard``), ``breaker_failures`` (5), ``breaker_cooldown`` (seconds, 30).

Every request goes through an adaptive rate limiter (429 and 503 halve the rate and pause everyone
until ``Retry-After``) and a circuit breaker (5xx, timeouts and refused connections open it; then
``CircuitOpenError`` asks the job to pause). Answers are validated — count, ``index`` order,
dimensions, finite values — because a bad vector stored silently poisons search for good.
The API key lives only in the client's headers: never in ``id``, messages or logs.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import numpy as np

from headwater.errors import ConfigError, PermanentError, RetryableError
from headwater.models import Vectors
from headwater.pipeline.ratelimit import (
    LIMITER_PRESETS,
    AdaptiveRateLimiter,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Clock,
    LimiterConfig,
    Sleep,
)
from headwater.ports import StateListener
from headwater.presets import DEFAULT_PRESET

OPENAI_ENDPOINT = "https://api.openai.com/v1/embeddings"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
OPTIONS = {
    "model", "dimensions", "key_env", "batch", "timeout", "attempts", "preset", "breaker_failures",
    "breaker_cooldown",
}  # fmt: skip
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_*\-]{4,}|Bearer\s+\S+)")


class OpenAIEmbedder:
    """Implements the Embedder port against ``POST /v1/embeddings``.

    Args:
        preset: the rate limiter profile when the URL names none (``Settings.preset``).
        clock, sleep: injected into the limiter and the retry backoff (tests run instantly).
    """

    def __init__(
        self,
        url: str,
        *,
        preset: str | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        parts = urlsplit(url)
        options = _options(url, parts.query)
        self.safe_url = _safe_url(url)
        if parts.scheme == "openai":
            self.model = (parts.netloc + parts.path).strip("/")
            self.endpoint = OPENAI_ENDPOINT
            self.key_env: str | None = options.get("key_env", OPENAI_KEY_ENV)
            self.send_dimensions = "dimensions" in options
            declared = options.get("dimensions") or KNOWN_DIMENSIONS.get(self.model)
        else:
            self.model = options.get("model", "")
            self.endpoint = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            self.key_env = options.get("key_env")
            self.send_dimensions = False
            declared = options.get("dimensions")
        if not self.model:
            msg = f"embedder URL {self.safe_url}: name the model (openai://MODEL or ?model=NAME)"
            raise ConfigError(msg)
        if declared is None:
            msg = f"embedder URL {self.safe_url}: add dimensions=N (the length of the model's vectors)"
            raise ConfigError(msg)
        self.dimensions = _positive_int(self.safe_url, "dimensions", declared)
        self.batch = _positive_int(self.safe_url, "batch", options.get("batch", 128))
        self.attempts = _positive_int(self.safe_url, "attempts", options.get("attempts", 4))
        self.timeout_seconds = _positive_float(self.safe_url, "timeout", options.get("timeout", 30))
        self.id = f"{'openai' if parts.scheme == 'openai' else 'http'}:{self.model}:{self.dimensions}"
        self.cacheable = True
        self._sleep = sleep or asyncio.sleep
        self._clock = clock
        limits = _preset(self.safe_url, options.get("preset") or preset or DEFAULT_PRESET)
        self.limiter = AdaptiveRateLimiter(limits, clock=clock, sleep=self._sleep)
        where = self.safe_url
        self.breaker = CircuitBreaker(
            f"embedder {where}",
            failure_threshold=_positive_int(where, "breaker_failures", options.get("breaker_failures", 5)),
            cooldown_seconds=_positive_float(where, "breaker_cooldown", options.get("breaker_cooldown", 30)),
            clock=clock,
        )
        self._client: httpx.AsyncClient | None = None

    def watch_state(self, listener: StateListener | None) -> None:
        """The breaker's moves: ``open`` (the server is taken as down), ``half_open`` (one trial
        call after the cool-down), ``closed`` (it answered again)."""
        if listener is None:
            self.breaker.on_change = None
            return
        self.breaker.on_change = lambda state, detail: listener(self.id, str(state), detail)

    @property
    def rate_limit(self) -> float:
        """Requests per second the limiter allows now (for progress events and metrics)."""
        return self.limiter.rate

    def observe_queue(self, depth: int, capacity: int) -> float:
        """The pipeline reports how full the queue after the embedder is (see GroupCommitter)."""
        return self.limiter.observe_queue(depth, capacity)

    async def open(self) -> None:
        if self._client is not None:
            return
        headers = {"Accept": "application/json"}
        if self.key_env is not None:
            key = os.environ.get(self.key_env, "")
            if not key:
                msg = f"embedder {self.safe_url} needs an API key in the environment variable {self.key_env}"
                raise ConfigError(msg)
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(self.timeout_seconds, connect=min(self.timeout_seconds, 10.0))
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        await self.open()
        parts = [await self._embed_batch(texts[i : i + self.batch]) for i in range(0, len(texts), self.batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        """One request, retried on RetryableError with backoff (or after the limiter's pause)."""
        attempt = 1
        while True:
            self.breaker.check()  # CircuitOpenError propagates: the job pauses, no retry here
            await self.limiter.acquire()
            try:
                response = await self._post(texts)
            except CircuitOpenError:
                raise
            except RetryableError:
                if attempt >= self.attempts:
                    raise
                paused = self.limiter.paused_until > self._clock()  # Retry-After: acquire() waits
                await self._sleep(0 if paused else _backoff(attempt))
                attempt += 1
                continue
            return parse_embeddings(
                _json(response, self.safe_url), len(texts), self.dimensions, self.safe_url
            )

    async def _post(self, texts: Sequence[str]) -> httpx.Response:
        """Send one request; transport errors and HTTP statuses become headwater errors here."""
        assert self._client is not None
        payload: dict[str, Any] = {"model": self.model, "input": list(texts)}
        if self.send_dimensions:
            payload["dimensions"] = self.dimensions
        try:
            response = await self._client.post(self.endpoint, json=payload)
        except httpx.TimeoutException as exc:
            seconds = self.timeout_seconds
            msg = f"embedder {self.safe_url}: no answer within {seconds:g} s ({type(exc).__name__})"
            raise self._outage(msg, reason="timeout") from exc
        except httpx.TransportError as exc:
            msg = f"embedder {self.safe_url}: connection failed ({type(exc).__name__}: {_redact(str(exc))})"
            raise self._outage(msg, reason=f"connection failed ({type(exc).__name__})") from exc
        self._check_status(response)
        return response

    def _outage(self, message: str, *, reason: str) -> RetryableError:
        """A failure that counts against the breaker; the one that opens it says so."""
        self.breaker.record_failure(reason)
        if self.breaker.state is BreakerState.OPEN:
            return self.breaker.open_error()
        return RetryableError(message)

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            self.breaker.record_success()
            return
        detail = f"HTTP {status}: {_error_detail(response)}"
        msg = f"embedder {self.safe_url}: {detail}"
        if status in (429, 503):
            self.limiter.throttled(_retry_after(response.headers.get("Retry-After")))
        if status >= 500 or status == 408:
            raise self._outage(msg, reason=f"HTTP {status}")
        self.breaker.record_success()  # the server answered: it is up (429 is the limiter's job)
        if status == 429:
            raise RetryableError(msg)
        raise PermanentError(msg)


def parse_embeddings(body: Any, count: int, dimensions: int, where: str) -> Vectors:
    """Vectors in input order from an embeddings answer, or PermanentError naming what is wrong."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        msg = f"embedder {where}: the answer has no 'data' list"
        raise PermanentError(msg)
    if len(data) != count:
        msg = f"embedder {where}: {len(data)} embeddings for {count} inputs"
        raise PermanentError(msg)
    out = np.empty((count, dimensions), dtype=np.float32)
    seen: set[int] = set()
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or index in seen:
            msg = f"embedder {where}: item {position} has a missing, repeated or out-of-range index {index!r}"
            raise PermanentError(msg)
        seen.add(index)
        embedding = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(embedding, list) or len(embedding) != dimensions:
            got = len(embedding) if isinstance(embedding, list) else type(embedding).__name__
            msg = f"embedder {where}: embedding {index} has {got} dimensions, expected {dimensions}"
            raise PermanentError(msg)
        try:
            with np.errstate(over="ignore"):
                out[index] = np.asarray(embedding, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            msg = f"embedder {where}: embedding {index} holds values that are not numbers"
            raise PermanentError(msg) from exc
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        msg = f"embedder {where}: embedding {int(bad[0])} contains NaN or infinite values"
        raise PermanentError(msg)
    return out


def _json(response: httpx.Response, where: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        msg = f"embedder {where}: the answer is not JSON ({response.headers.get('content-type', 'no type')})"
        raise PermanentError(msg) from exc


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** (attempt - 1)))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_detail(response: httpx.Response) -> str:
    """The server's own explanation, short and with anything key-like removed."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = str(error.get("message") if isinstance(error, dict) else error or body)
    except ValueError:
        text = response.text
    return _redact(text.strip()[:200]) or response.reason_phrase


def _redact(text: str) -> str:
    return _SECRETISH.sub("[redacted]", text)


def _safe_url(url: str) -> str:
    """The URL for messages: no user, password or query string (those may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _options(url: str, query: str) -> dict[str, str]:
    parsed = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(parsed) - OPTIONS)
    if unknown:
        msg = f"embedder URL {_safe_url(url)}: unknown option(s) {unknown}; known: {sorted(OPTIONS)}"
        raise ConfigError(msg)
    return parsed


def _preset(where: str, name: str) -> LimiterConfig:
    if name not in LIMITER_PRESETS:
        msg = f"embedder URL {where}: preset {name!r} is not one of {sorted(LIMITER_PRESETS)}"
        raise ConfigError(msg)
    return LIMITER_PRESETS[name]


def _positive_int(where: str, name: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        msg = f"embedder URL {where}: {name} must be a positive integer, not {value!r}"
        raise ConfigError(msg)
    return number


def _positive_float(where: str, name: str, value: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        number = 0.0
    if not number > 0:
        msg = f"embedder URL {where}: {name} must be a positive number of seconds, not {value!r}"
        raise ConfigError(msg)
    return number
