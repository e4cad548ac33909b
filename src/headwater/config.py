"""Settings: command-line flags, then environment variables with the ``HEADWATER_`` prefix, then
seed 001's variable names (``WATERMARK_SECONDS``, ``LATE_EVENT_POLICY``, … — ``ALIASES``), then
``headwater.toml``, then the preset, then defaults.

The CLI only ever overrides fields of this one object, so every option also has its environment
variable (``--embedder`` ↔ ``HEADWATER_EMBEDDER``) and the Python API sees the same values.
Nothing is silently ignored: an unknown ``headwater.toml`` key, a seed variable with a bad value
and a seed variable naming an adapter headwater does not have yet are configuration errors.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from headwater.errors import ConfigError
from headwater.presets import DEFAULTS, PRESETS, get_preset
from headwater.redaction import redact_text

TOML_FILE = "headwater.toml"
ENV_PREFIX = "HEADWATER_"
LIST_HINT = 'a list is comma-separated (a,b) or JSON (["a", "b"])'

# List-valued settings are read as text (NoDecode) and split by ``_split_list``: a value may be
# comma-separated or a JSON list, in the environment and in headwater.toml alike.
StrList = Annotated[list[str], NoDecode]
PathList = Annotated[list[Path], NoDecode]


class Settings(BaseSettings):
    """Everything a run can be configured with. Units are in the names."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, toml_file=TOML_FILE, extra="ignore", validate_default=True
    )

    home: Path = Path(".headwater")
    embedder: str = "hash://"
    vector_store: str | None = None  # default: lancedb://{home}/vectors
    metadata_store: str | None = None  # default: sqlite:///{home}/state.db

    include: StrList = Field(
        default_factory=lambda: ["**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.pdf"]
    )
    exclude: StrList = Field(default_factory=lambda: ["**/.*", "**/.*/**"])
    chunk_size_chars: int = Field(1000, ge=50)
    chunk_overlap_chars: int = Field(100, ge=0)
    pii_scrub: bool = False

    # Defaults of the fields a preset sets are the "standard" preset's (presets.py holds the values).
    preset: str | None = None  # local | standard | high-throughput; fills in only fields not set
    embed_batch_size: int = Field(DEFAULTS["embed_batch_size"], ge=1, le=1_000_000)
    commit_batch_chunks: int = Field(DEFAULTS["commit_batch_chunks"], ge=1, le=10_000_000)
    concurrency: int = Field(DEFAULTS["concurrency"], ge=1, le=10_000)
    workers: int = Field(
        DEFAULTS["workers"], ge=0, le=1024
    )  # extraction processes (forked at once); 0 = one per core
    max_attempts: int = Field(3, ge=1)
    retry_attempts: int = Field(5, ge=1)
    retry_initial_seconds: float = Field(0.2, ge=0)
    retry_max_seconds: float = Field(30.0, ge=0)
    queue_size: int = Field(DEFAULTS["queue_size"], ge=1, le=10_000_000)

    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1)
    pdf_max_pages: int = Field(0, ge=0)  # 0: no page limit (extraction is bounded by time and memory)
    extract_timeout_seconds: float = Field(60.0, gt=0)
    progress_interval_seconds: float = Field(2.0, gt=0)
    document_started_events: bool = False  # opt-in: a DocumentStarted event for each document read
    wait_for_home: bool = True  # another writer holds the home: wait (False: exit 4 at once)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill in the preset's values for fields no source set. This runs on the merged input of
        init arguments, environment and headwater.toml, before defaults: whatever the user said
        explicitly, anywhere, beats the preset, and the preset beats the built-in defaults."""
        name = data.get("preset") if isinstance(data, dict) else None
        if not isinstance(name, str) or name not in PRESETS:
            return data  # no preset, or an unknown one: the field validator reports that
        return {**PRESETS[name].settings, **data}

    @field_validator("include", "exclude", "windows", "api_source_roots", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """``a,b`` and ``["a", "b"]`` are the same list; an empty text is an empty list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                msg = f"not a JSON list ({exc.msg} at character {exc.pos}); {LIST_HINT}"
                raise ValueError(msg) from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("home")
    @classmethod
    def _home_is_a_folder(cls, home: Path) -> Path:
        if home.exists() and not home.is_dir():  # one stat: every command would fail later, less clearly
            msg = "not a folder: the home is the folder headwater keeps its state in (created if missing)"
            raise ValueError(msg)
        return home

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            # "Bearer " would then pass: an empty token must not open a public bind
            msg = "the API token is empty: set a long random value, or unset it to serve on loopback only"
            raise ValueError(msg)
        return token

    @field_validator("feature_sets")
    @classmethod
    def _known_feature_set_keys(cls, tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from headwater.featuresets import check_declaration_keys

        for name, table in tables.items():
            try:
                check_declaration_keys(name, table)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return tables

    @field_validator("windows")
    @classmethod
    def _parse_windows(cls, windows: list[str]) -> list[str]:
        from headwater.featuresets import parse_window

        for window in windows:
            try:
                parse_window(window)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return windows

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        if name is not None:
            get_preset(name)  # ValueError naming the choices
        return name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        try:
            toml_settings = TomlConfigSettingsSource(settings_cls)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(_toml_problem(exc)) from exc
        check_toml_keys(toml_settings.toml_data)
        # the seed's names come after HEADWATER_*: when both are set, the HEADWATER_ name wins
        return (init_settings, env_settings, AliasSettingsSource(settings_cls), toml_settings)

    # Which of the home's indexes is current (HOME/index.json says): an embedder --rebuild builds
    # the next one beside it and switches to it when complete. Not a user setting.
    index_generation: int = Field(0, ge=0)

    @property
    def vector_store_url(self) -> str:
        if self.vector_store:
            return self.vector_store
        return f"lancedb://{self.home.resolve()}/{generation_name('vectors', self.index_generation)}"

    @property
    def metadata_store_url(self) -> str:
        if self.metadata_store:
            return self.metadata_store
        return f"sqlite:///{self.home.resolve()}/{generation_name('state', self.index_generation)}.db"

    # --- signals (issue #3): defaults for feature sets not declared in headwater.toml ---------
    feature_set: str = "default"
    feature_set_version: int | None = Field(None, ge=0, le=2**31 - 1)  # None: the declared version, else 1
    windows: StrList = Field(default_factory=lambda: ["1s", "5s", "1m"])
    lateness_ms: int = Field(2000, ge=0)
    late_policy: str = Field("drop", pattern="^(drop|hold|correct)$")
    correct_horizon_ms: int = Field(600_000, ge=0)
    ewma_alpha: float = Field(0.1, gt=0, le=1)
    max_payload_bytes: int = Field(65_536, ge=64)
    max_future_ms: int = Field(86_400_000, ge=0)
    # Per-batch costs (the online serving view: one row per entity and window size; three Parquet
    # parts; two fsyncs) are fixed, so larger batches amortize them: 250k events ran ~15% faster
    # than 100k (bench/signals.py) for ~90 MiB more peak memory.
    micro_batch_events: int = Field(250_000, ge=1, le=100_000_000)
    checkpoint_interval_seconds: float = Field(1.0, ge=0)
    feature_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)  # [feature_sets.NAME] tables

    # --- streaming (issue #4) ---------------------------------------------------------------------
    bus: str = "memory://default"  # nats://host:4222 | redis://host:6379/0; memory:// is in-process only
    topic_docs: str = Field("docs", min_length=1)  # watch publishes to it, worker docs consumes it
    topic_signals: str = Field("signals", min_length=1)  # publish signals, worker signals
    poll_interval_seconds: float = Field(5.0, gt=0)  # how often `watch` looks at the folder
    worker_batch_size: int = Field(DEFAULTS["worker_batch_size"], ge=1, le=1_000_000)
    ack_wait_seconds: float = Field(30.0, gt=0)
    idle_timeout_seconds: float = Field(30.0, gt=0)  # a quiet stream closes its open windows
    drain_seconds: float = Field(30.0, ge=0)  # SIGTERM: time the in-flight batch gets to commit
    online_store: str | None = None  # default: sqlite:///{home}/features.db
    offline_store: str | None = None  # default: {home}/offline (Parquet, hive-partitioned)

    # --- operating it (issue #5) --------------------------------------------------------------------
    api_token: SecretStr | None = None  # bearer token of `headwater serve`; required off loopback
    max_concurrent_jobs: int = Field(1, ge=1, le=1000)  # jobs the server runs at once (more wait by priority)
    api_max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    api_page_limit: int = Field(500, ge=1)  # most items one list response returns
    api_source_roots: PathList = Field(default_factory=list)  # folders jobs may read; [] = the cwd
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")

    @property
    def online_store_url(self) -> str:
        return self.online_store or f"sqlite:///{self.home.resolve()}/features.db"

    @property
    def offline_store_url(self) -> str:
        return self.offline_store or f"file://{self.home.resolve()}/offline"


def generation_name(stem: str, generation: int) -> str:
    """``vectors``, ``state`` for a home's first index; ``vectors-g2``, ``state-g2`` for the
    second (an embedder --rebuild) and so on."""
    return stem if generation == 0 else f"{stem}-g{generation}"


def load_settings(*, rebuild: bool = False, index: bool = True, **overrides: Any) -> Settings:
    """Build settings; whatever is wrong becomes a one-line ConfigError that names the setting (the
    option, ``HEADWATER_X`` or the headwater.toml key), its value (never a secret's), why, and what
    to do. The home's recorded index settings apply last (``home_settings``: what was not asked
    for comes from the home; a conflicting request is refused unless ``rebuild``)."""
    from headwater.home_settings import reconcile  # it imports this module

    return reconcile(_build(overrides), rebuild=rebuild, index=index)


def _build(overrides: dict[str, Any]) -> Settings:
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**clean)
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = "; ".join(
            _problem(err["loc"], err["msg"], err.get("input"), clean) for err in exc.errors()
        )
        msg = f"invalid configuration: {problems}"
        raise ConfigError(msg) from exc
    except SettingsError as exc:
        raise ConfigError(_settings_problem(exc)) from exc
    except Exception as exc:  # any other way reading the settings fails is still a configuration error
        msg = f"cannot read the configuration: {type(exc).__name__}: {redact_text(str(exc))[:300]}"
        raise ConfigError(msg) from exc


_SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
)


def _problem(loc: tuple[int | str, ...], why: str, value: Any, overrides: dict[str, Any]) -> str:
    """``chunk_size_chars = 'ten' (from HEADWATER_CHUNK_SIZE_CHARS): why; what to do``."""
    field = str(loc[0]) if loc else ""
    why = why.removeprefix("Value error, ")
    if field not in Settings.model_fields:
        return why
    where, fix = _source(field, overrides)
    if where in os.environ:  # HEADWATER_X or the seed's name: what the user wrote, not its parse
        value = os.environ[where]
    if field in {"include", "exclude", "windows", "api_source_roots"} and "valid list" in why:
        why = f"{why} ({LIST_HINT})"
    return f"{field} = {_show(field, value)} (from {where}): {why}; {fix}"


def _source(field: str, overrides: dict[str, Any]) -> tuple[str, str]:
    """Where a field's value came from (the first source that has it wins) and how to fix it there."""
    source = setting_source(field, overrides)
    if source.kind == "flag":
        return f"the command line: {source.where}", "give another value"
    if source.kind == "environment":
        return source.where, f"fix {source.where} or unset it"
    if source.kind == "headwater.toml":
        return source.where, "fix or remove that key"
    return "the defaults", f"set {ENV_PREFIX}{field.upper()}"


SourceKind = Literal["flag", "environment", "home", "headwater.toml", "preset", "default"]
"""Where a setting can come from, the winner first. ``home``: settings recorded in the home; no
home records any yet (another item of issue #14), so ``setting_source`` never answers it today."""


@dataclass(frozen=True, slots=True)
class SettingSource:
    """Where one setting's effective value came from: ``kind`` and, for most kinds, ``where``
    (the option, the variable, the headwater.toml path or the preset's name)."""

    kind: SourceKind
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "preset":
            return f"preset {self.where}"
        return f"{self.kind} ({self.where})" if self.where else self.kind


def setting_source(field: str, flags: Mapping[str, Any], preset: str | None = None) -> SettingSource:
    """The source ``Settings`` took ``field`` from, given the flags passed to ``load_settings`` and
    the effective preset: flag, ``HEADWATER_X``, the seed's name, headwater.toml, preset, default."""
    if flags.get(field) is not None:
        return SettingSource("flag", f"--{_OPTIONS.get(field, field.replace('_', '-'))}")
    env = _env_name(field)
    if env is not None:
        return SettingSource("environment", env)
    alias = _alias_env_name(field)
    if alias is not None:
        return SettingSource("environment", alias)
    if field in _toml_table():
        return SettingSource("headwater.toml", str(Path(TOML_FILE).resolve()))
    if preset is not None and preset in PRESETS and field in PRESETS[preset].settings:
        return SettingSource("preset", preset)
    return SettingSource("default")


_OPTIONS = {  # CLI options whose name is not the setting's
    "chunk_size_chars": "chunk-size",
    "chunk_overlap_chars": "chunk-overlap",
    "micro_batch_events": "batch-events",
    "worker_batch_size": "batch-size",
    "max_concurrent_jobs": "max-jobs",
    "idle_timeout_seconds": "idle-timeout",
    "poll_interval_seconds": "interval",
    "topic_docs": "topic",
    "topic_signals": "topic",
    "feature_set_version": "feature-version",
}


def _env_name(field: str) -> str | None:
    wanted = f"{ENV_PREFIX}{field}".lower()
    return next((key for key in os.environ if key.lower() == wanted), None)


def _toml_table() -> dict[str, Any]:
    try:
        return tomllib.loads(Path(TOML_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _show(field: str, value: Any) -> str:
    if field in _SECRET_FIELDS:
        return "(hidden)"
    if isinstance(value, Path):
        value = str(value)
    text = redact_text(repr(value if not isinstance(value, SecretStr) else "(hidden)"))
    return text if len(text) <= 80 else f"{text[:77]}..."


def _settings_problem(exc: SettingsError) -> str:
    """pydantic-settings could not even parse a value (``HEADWATER_FEATURE_SETS`` that is not JSON)."""
    match = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    cause = exc.__cause__
    why = f"{cause}" if cause is not None else str(exc)
    if match is None:
        return f"invalid configuration: {redact_text(str(exc))}: {redact_text(why)}"
    field, source = match.groups()
    if source.startswith("Env") and (env := _env_name(field)) is not None:
        value = _show(field, os.environ[env])
        problem = f"{field} = {value} (from {env}): not valid JSON ({why})"
        return f"invalid configuration: {problem}; fix {env} or unset it"
    return f"invalid configuration: {field} (from {source}): {redact_text(why)}"


def _toml_problem(exc: BaseException) -> str:
    where = Path(TOML_FILE).resolve()
    if isinstance(exc, tomllib.TOMLDecodeError):
        why = f"not valid TOML ({exc})"
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text (byte {exc.start})"
    else:
        why = f"cannot be read ({type(exc).__name__}: {getattr(exc, 'strerror', None) or exc})"
    return f"{where} {why}: fix it or remove it (settings also come from HEADWATER_* variables)"


# --- seed 001's variable names -------------------------------------------------------------------

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


def _url_of(scheme: str, what: str, supported: str) -> Converter:
    def check(name: str, text: str) -> str:
        found = urlsplit(text.strip()).scheme.lower()
        if found != scheme:
            kind = f"a {found}:// {what}" if found else f"{what} {_shown(text)} without a {scheme}:// URL"
            _not_yet(kind, supported)(name, text)
        return text.strip()

    return check


def _shown(text: str) -> str:
    shown = repr(redact_text(text))  # never a password: postgresql://***@host/db
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


@dataclass(frozen=True, slots=True)
class Alias:
    """A seed 001 variable: the Settings field it sets (None: only checked) and how its text
    becomes that field's value (units converted: seconds → milliseconds)."""

    setting: str | None
    convert: Converter = _text


_BUSES = "the buses are nats:// (NATS_URL or HEADWATER_BUS), redis:// and memory://"
ALIASES: Mapping[str, Alias] = MappingProxyType(
    {
        "SOURCE_INCLUDE": Alias("include"),
        "SOURCE_EXCLUDE": Alias("exclude"),
        "SOURCE_POLL_INTERVAL_SEC": Alias("poll_interval_seconds"),
        "NATS_URL": Alias("bus", _url_of("nats", "NATS_URL", "give nats://HOST:PORT")),
        "KAFKA_BROKERS": Alias(None, _not_yet("a Kafka bus", _BUSES)),
        "PULSAR_URL": Alias(None, _not_yet("a Pulsar bus", _BUSES)),
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
        "OFFLINE_DATA_PATH": Alias("offline_store"),
        "OFFLINE_FORMAT": Alias(
            None,
            _only("parquet", "the offline format {value}", "the offline store writes Parquet (parquet)"),
        ),
        "METADATA_DB_URL": Alias(
            "metadata_store",
            _url_of("sqlite", "metadata database", "the metadata store is SQLite (sqlite:///PATH)"),
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


def _alias_env_name(field: str) -> str | None:
    names = {name for name, alias in ALIASES.items() if alias.setting == field}
    return next((key for key in os.environ if key.upper() in names), None)


class AliasSettingsSource(PydanticBaseSettingsSource):
    """The seed's variables, after the ``HEADWATER_`` ones: ``current_state`` holds what flags and
    ``HEADWATER_*`` already set, and those win."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the table instead

    def __call__(self) -> dict[str, Any]:
        return alias_values(os.environ, taken=self.current_state)


# --- headwater.toml keys --------------------------------------------------------------------------


def check_toml_keys(table: Mapping[str, Any], where: str | None = None) -> None:
    """An unknown top-level key is an error naming it and the nearest valid one (a typo such as
    ``embeder`` would otherwise be ignored, and the default used)."""
    unknown = [key for key in table if key not in Settings.model_fields]
    if not unknown:
        return
    path = where or str(Path(TOML_FILE).resolve())
    problems = "; ".join(_unknown_key(key) for key in unknown)
    msg = f"invalid configuration: {path}: {problems}: fix or remove it (`headwater config show` lists all)"
    raise ConfigError(msg)


def _unknown_key(key: str) -> str:
    alias = ALIASES.get(key.upper())
    if alias is not None and alias.setting is not None:
        return f"unknown key {key!r}: {key.upper()} is an environment variable, here write {alias.setting}"
    return f"unknown key {key!r}{did_you_mean(key, Settings.model_fields)}"


def did_you_mean(key: str, choices: Collection[str]) -> str:
    """``" (did you mean 'embedder'?)"``, or nothing when no choice is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
