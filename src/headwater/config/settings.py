"""The ``Settings`` model: every field a run can be configured with, its validation, and the
order of its sources (flags, ``HEADWATER_*``, the seed's names, headwater.toml; then the preset,
then the defaults). Loading it with readable errors is ``config.loading``'s job."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from headwater.config.aliases import AliasSettingsSource
from headwater.config.toml_file import TOML_FILE, check_toml_keys, toml_problem
from headwater.config.urls import (
    default_metadata_store_url,
    default_offline_store_url,
    default_online_store_url,
    default_vector_store_url,
)
from headwater.errors import ConfigError
from headwater.presets import DEFAULTS, PRESETS, get_preset

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
        default_factory=lambda: [
            "**/*.md",
            "**/*.markdown",
            "**/*.txt",
            "**/*.rst",
            "**/*.pdf",
            "**/*.html",
            "**/*.htm",
        ]
    )
    exclude: StrList = Field(default_factory=lambda: ["**/.*", "**/.*/**"])
    chunk_size_chars: int = Field(1000, ge=50)
    chunk_overlap_chars: int = Field(100, ge=0)
    pii_scrub: bool = False
    # Object-store sources (s3://, gs://, az://): arguments of the fsspec filesystem (endpoint_url,
    # profile, anon, account_name, …) when the SDK's own environment and profiles are not enough.
    # Values under secret-named keys are masked wherever settings are shown.
    storage_options: dict[str, Any] = Field(default_factory=dict)

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
            raise ConfigError(toml_problem(exc)) from exc
        check_toml_keys(toml_settings.toml_data, cls.model_fields)
        # the seed's names come after HEADWATER_*: when both are set, the HEADWATER_ name wins
        return (init_settings, env_settings, AliasSettingsSource(settings_cls), toml_settings)

    # Which of the home's indexes is current (HOME/index.json says): an embedder --rebuild builds
    # the next one beside it and switches to it when complete. Not a user setting.
    index_generation: int = Field(0, ge=0)

    @property
    def vector_store_url(self) -> str:
        if self.vector_store:
            return self.vector_store
        return default_vector_store_url(self.home, self.index_generation)

    @property
    def metadata_store_url(self) -> str:
        if self.metadata_store:
            return self.metadata_store
        return default_metadata_store_url(self.home, self.index_generation)

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
    # than 100k (bench/signals.py) for ~90 MiB more peak memory. A file's last batch may be up to
    # an eighth larger (pipeline/signal_inputs.py: tail_allowance).
    micro_batch_events: int = Field(250_000, ge=1, le=100_000_000)
    checkpoint_interval_seconds: float = Field(1.0, ge=0)
    # Where a backfill computes: local (this process), or Spark — spark (local[*]), local[N],
    # spark://HOST:PORT, yarn, k8s://URL (adapters/spark.py checks it; extra [spark]).
    compute: str = "local"
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
    # default: the metadata store's database and schema when it is postgresql://, else {home}/jobs.db
    job_store: str | None = None
    job_lease_seconds: float = Field(30.0, gt=0)  # a dead runner's job is taken over after this
    job_renew_seconds: float = Field(10.0, gt=0)  # a running job's lease is renewed this often (< lease)
    api_max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    api_page_limit: int = Field(500, ge=1)  # most items one list response returns
    api_source_roots: PathList = Field(default_factory=list)  # folders jobs may read; [] = the cwd
    # OpenLineage run events (START/COMPLETE/FAIL) of every run: http(s)://HOST[:PORT] (posted to
    # /api/v1/lineage) or file:///PATH (JSON lines); extra [lineage]
    openlineage_url: str | None = None
    openlineage_namespace: str = Field("headwater", min_length=1)
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")

    @property
    def job_store_url(self) -> str:
        """Jobs go where the index's metadata is when that is a PostgreSQL database, so runners
        sharing an index share its queue too; else ``jobs.db`` in the home, beside ``state.db``
        (journal writes never wait for a pipeline's transaction)."""
        if self.job_store:
            return self.job_store
        if self.metadata_store_url.partition("://")[0] in ("postgresql", "postgres"):
            return self.metadata_store_url
        return f"sqlite:///{self.home.resolve()}/jobs.db"

    @property
    def online_store_url(self) -> str:
        return self.online_store or default_online_store_url(self.home)

    @property
    def offline_store_url(self) -> str:
        return self.offline_store or default_offline_store_url(self.home)
