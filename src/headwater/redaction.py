"""Redaction of secrets from anything that leaves the process: log lines, SSE payloads, API
answers, DLQ entries (messages, tracebacks and the stored payloads), error messages.

Pure and stateless: the caller passes the exact secret values it knows about (the registry of
those lives in ``headwater.observability``). Only secrets are removed: the API token and other
registered values, ``Bearer``/``Basic`` values, key-shaped strings (``sk-…``, ``ghp_…``,
``AKIA…``), credentials in URLs, and the values of secret-named fields and query parameters.
Timestamps, numbers, host names and IP addresses are left as they are: an operator needs them,
and a dead letter must stay replayable. PII (e-mails, phones, …) is a property of content, not
of messages: ``stages.scrub`` removes it from document text when the user turns scrubbing on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
T = TypeVar("T")

_SECRET_WORDS = frozenset(
    {
        "token", "secret", "password", "passwd", "pwd", "passphrase", "apikey", "authorization",
        "auth", "credential", "credentials", "cookie", "key", "sig", "signature", "sas",
    }
)  # fmt: skip
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "apikey", "connectionstring")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=\-]{4,}", re.IGNORECASE)
_KEY_SHAPES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,})"
)
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]+@")
# Bounded name lengths keep these linear on long inputs (a DLQ message can be a whole traceback).
_QUERY_PARAM = re.compile(r"([?&;])([^=&#\s]{1,64})=([^&#\s]*)")
_ASSIGNMENT = re.compile(
    r"""\b([\w\-]{0,40}?(?:token|secret|passw(?:or)?d|pwd|passphrase|api[_-]?key|authorization|auth"""
    r"""|credentials?|cookie|key|sig|signature))\b(["']?\s*[:=]\s*)(["']?)([^\s"'&,;}]+)""",
    re.IGNORECASE,
)  # the name must end in a secret word, so "Error: password=x" is not consumed as "Error: password"


def is_secret_key(name: str) -> bool:
    """Whether a field or parameter name says its value is a credential (``api_key``,
    ``X-Auth-Token``, ``clientSecret``). Whole words only: ``max_tokens`` is not one."""
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    compact = "".join(words)
    return bool(compact) and compact.endswith(_SECRET_SUFFIXES)


def redact_url(url: str) -> str:
    """A URL safe to show: no user or password, secret-named query parameters masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _redact_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: unchanged (urlunsplit would turn "hash://?dim=64" into "hash:?dim=64")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text with known secret values and credential-shaped substrings replaced; nothing
    else changes (a text without secrets comes back equal)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _KEY_SHAPES.sub(MASK, text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _QUERY_PARAM.sub(_mask_param, text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def redact_value(value: T, secrets: Iterable[str] = ()) -> T:
    """``value`` with every string inside it redacted; containers are copied, never mutated, and
    keep their type, so a dict in is a dict out. Values under secret-named keys are masked whole
    (numbers and booleans excepted: a count is not a credential)."""
    return cast(T, _redact(value, tuple(secrets)))


def redact_bytes(data: bytes, secrets: Iterable[str] = ()) -> bytes:
    """``data`` itself (the same bytes) unless it holds a secret: the way a stored payload stays
    replayable byte for byte. Text that is not UTF-8 is checked through a lossless decoding."""
    text = data.decode("utf-8", "surrogateescape")
    cleaned = redact_text(text, secrets)
    return data if cleaned == text else cleaned.encode("utf-8", "surrogateescape")


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, bytes):
        return redact_bytes(value, secrets)
    if isinstance(value, dict):
        return {k: _redact_item(str(k), v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    return value


def _redact_item(key: str, value: Any, secrets: tuple[str, ...]) -> Any:
    if is_secret_key(key) and value and not isinstance(value, bool | int | float):
        return MASK
    return _redact(value, secrets)


def _redact_query(query: str) -> str:
    if not query:
        return query
    return _QUERY_PARAM.sub(_mask_param, "?" + query)[1:]


def _mask_param(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    return f"{sep}{name}={MASK}" if value and is_secret_key(name) else match.group(0)


def _mask_assignment(match: re.Match[str]) -> str:
    name, between, quote, value = match.groups()
    if value == MASK or not is_secret_key(name):
        return match.group(0)
    return f"{name}{between}{quote}{MASK}"
