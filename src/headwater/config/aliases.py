"""Seed 001's variable names (``WATERMARK_SECONDS``, ``NATS_URL``, …): which setting each one
sets, how its text converts (seconds → milliseconds), and which name something headwater does
not have yet, so that setting it is an error rather than silently ignored.

They are read after the ``HEADWATER_`` variables: when both are set, the ``HEADWATER_`` name wins.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from headwater.errors import ConfigError
from headwater.redaction import redact_text

Converter = Callable[[str, str], Any]
"""``(variable, text) → value`` for the setting (None: valid, nothing to set); a ConfigError
naming the variable when the text is wrong or names something headwater does not have yet."""


def _text(_name: str, text: str) -> str:
    return text  # the setting's own validation parses it (and names the variable when it fails)


def _seconds_to_ms(name: str, text: str) -> int:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        msg = (
            f"invalid configuration: {name} = {_shown(text)}: not a number of seconds (e.g. 5 or 0.5); "
            f"fix {name} or unset it"
        )
        raise ConfigError(msg)
    return round(seconds * 1000)


def _not_yet(what: str, supported: str) -> Converter:
    def refuse(name: str, text: str) -> None:
        msg = (
            f"invalid configuration: {name} = {_shown(text)}: {what} is not supported yet; "
            f"{supported}; unset {name}"
        )
        raise ConfigError(msg)

    return refuse


def _only(accepted: str, what: str, supported: str) -> Converter:
    """A choice of which headwater has one so far: that one is fine (and the default)."""

    def check(name: str, text: str) -> None:
        if text.strip().lower() != accepted:
            _not_yet(what.format(value=_shown(text)), supported)(name, text)

    return check


def _url_of(scheme: str | tuple[str, ...], what: str, supported: str) -> Converter:
    schemes = (scheme,) if isinstance(scheme, str) else scheme

    def check(name: str, text: str) -> str:
        found = urlsplit(text.strip()).scheme.lower()
        if found not in schemes:
            kind = f"a {found}:// {what}" if found else f"{what} {_shown(text)} without a {schemes[0]}:// URL"
            _not_yet(kind, supported)(name, text)
        return text.strip()

    return check


def _kafka_brokers(name: str, text: str) -> str:
    """``HOST:PORT[,HOST:PORT]`` (Kafka's bootstrap list) as ``kafka://HOST:PORT,HOST:PORT``."""
    given = text.strip()
    if given.lower().startswith("kafka://"):
        return given
    brokers = [b.strip() for b in given.split(",") if b.strip()]
    if not brokers or any("://" in b or not b.rpartition(":")[2].isdigit() for b in brokers):
        msg = (
            f"invalid configuration: {name} = {_shown(text)}: not a broker list HOST:PORT[,HOST:PORT] "
            f"(or a kafka:// URL); fix {name} or unset it"
        )
        raise ConfigError(msg)
    return "kafka://" + ",".join(brokers)


def _shown(text: str) -> str:
    shown = repr(redact_text(text))  # never a password: postgresql://***@host/db
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


@dataclass(frozen=True, slots=True)
class Alias:
    """A seed 001 variable: the Settings field it sets (None: only checked) and how its text
    becomes that field's value (units converted: seconds → milliseconds)."""

    setting: str | None
    convert: Converter = _text


_BUSES = (
    "the buses are nats:// (NATS_URL or HEADWATER_BUS), kafka:// (KAFKA_BROKERS or HEADWATER_BUS), "
    "redis:// and memory://"
)
ALIASES: Mapping[str, Alias] = MappingProxyType(
    {
        "SOURCE_INCLUDE": Alias("include"),
        "SOURCE_EXCLUDE": Alias("exclude"),
        "SOURCE_POLL_INTERVAL_SEC": Alias("poll_interval_seconds"),
        "NATS_URL": Alias("bus", _url_of("nats", "NATS_URL", "give nats://HOST:PORT")),
        "KAFKA_BROKERS": Alias("bus", _kafka_brokers),
        "PULSAR_URL": Alias(None, _not_yet("a Pulsar bus (no broker to test an adapter on)", _BUSES)),
        "TOPIC_DOCS": Alias("topic_docs"),
        "TOPIC_SIGNALS": Alias("topic_signals"),
        "TOPIC_DLQ": Alias(
            None,
            _not_yet(
                "one dead-letter topic for all",
                "each topic's dead letters go to TOPIC.dlq (docs.dlq, signals.dlq): `headwater dlq "
                "list` shows them",
            ),
        ),
        "STREAM_CONCURRENCY": Alias("concurrency"),
        "STREAM_BATCH_SIZE": Alias("worker_batch_size"),
        "MAX_EMBED_BATCH": Alias("embed_batch_size"),
        "WATERMARK_SECONDS": Alias("lateness_ms", _seconds_to_ms),
        "LATE_EVENT_POLICY": Alias("late_policy"),
        "FEATURE_WINDOWS": Alias("windows"),
        "FEATURE_SET_VERSION": Alias("feature_set_version"),
        # the OpenLineage client's own variables (its HTTP transport's URL, its default namespace)
        "OPENLINEAGE_URL": Alias("openlineage_url"),
        "OPENLINEAGE_NAMESPACE": Alias("openlineage_namespace"),
        "OFFLINE_DATA_PATH": Alias("offline_store"),
        "OFFLINE_FORMAT": Alias(
            None,
            _only(
                "parquet",
                "the offline format {value}",
                "OFFLINE_FORMAT takes parquet; Delta Lake is chosen by the store's URL: "
                "HEADWATER_OFFLINE_STORE=delta:///PATH or delta+s3://BUCKET/PREFIX",
            ),
        ),
        "METADATA_DB_URL": Alias(
            "metadata_store",
            _url_of(
                ("sqlite", "postgresql", "postgres"),
                "metadata database",
                "the metadata store is SQLite (sqlite:///PATH) or PostgreSQL "
                "(postgresql://USER@HOST:PORT/DB?schema=NAME)",
            ),
        ),
        "VECTORSTORE_BACKEND": Alias(
            None,
            _only(
                "lancedb",
                "the vector store backend {value}",
                "the vector store is LanceDB (lancedb, HEADWATER_VECTOR_STORE=lancedb://PATH)",
            ),
        ),
    }
)


def alias_values(environ: Mapping[str, str], taken: Collection[str] = ()) -> dict[str, Any]:
    """Settings values from the seed's variables in ``environ``; fields in ``taken`` (set by a flag
    or their ``HEADWATER_`` variable, which win) are left out, unread."""
    values: dict[str, Any] = {}
    for key, text in environ.items():
        alias = ALIASES.get(key.upper())
        if alias is None or alias.setting in taken:
            continue
        value = alias.convert(key.upper(), text)
        if alias.setting is not None and value is not None:
            values[alias.setting] = value
    return values


def alias_env_name(field: str) -> str | None:
    names = {name for name, alias in ALIASES.items() if alias.setting == field}
    return next((key for key in os.environ if key.upper() in names), None)


class AliasSettingsSource(PydanticBaseSettingsSource):
    """The seed's variables, after the ``HEADWATER_`` ones: ``current_state`` holds what flags and
    ``HEADWATER_*`` already set, and those win."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the table instead

    def __call__(self) -> dict[str, Any]:
        return alias_values(os.environ, taken=self.current_state)
