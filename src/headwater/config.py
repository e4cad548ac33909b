"""Settings: environment variables with the ``HEADWATER_`` prefix, then ``headwater.toml``, then defaults.

The CLI only ever overrides fields of this one object, so every option also has its environment
variable (``--embedder`` ↔ ``HEADWATER_EMBEDDER``) and the Python API sees the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from headwater.errors import ConfigError
from headwater.presets import DEFAULTS, PRESETS, get_preset


class Settings(BaseSettings):
    """Everything a run can be configured with. Units are in the names."""

    model_config = SettingsConfigDict(
        env_prefix="HEADWATER_", toml_file="headwater.toml", extra="ignore", validate_default=True
    )

    home: Path = Path(".headwater")
    embedder: str = "hash://"
    vector_store: str | None = None  # default: lancedb://{home}/vectors
    metadata_store: str | None = None  # default: sqlite:///{home}/state.db

    include: list[str] = Field(
        default_factory=lambda: ["**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.pdf"]
    )
    exclude: list[str] = Field(default_factory=lambda: ["**/.*", "**/.*/**"])
    chunk_size_chars: int = Field(1000, ge=50)
    chunk_overlap_chars: int = Field(100, ge=0)
    pii_scrub: bool = False

    # Defaults of the fields a preset sets are the "standard" preset's (presets.py holds the values).
    preset: str | None = None  # local | standard | high-throughput; fills in only fields not set
    embed_batch_size: int = Field(DEFAULTS["embed_batch_size"], ge=1)
    commit_batch_chunks: int = Field(DEFAULTS["commit_batch_chunks"], ge=1)
    concurrency: int = Field(DEFAULTS["concurrency"], ge=1)
    workers: int = Field(DEFAULTS["workers"], ge=0)  # extraction processes; 0 = one per core
    max_attempts: int = Field(3, ge=1)
    retry_attempts: int = Field(5, ge=1)
    retry_initial_seconds: float = Field(0.2, ge=0)
    retry_max_seconds: float = Field(30.0, ge=0)
    queue_size: int = Field(DEFAULTS["queue_size"], ge=1)

    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1)
    pdf_max_pages: int = Field(0, ge=0)  # 0: no page limit (extraction is bounded by time and memory)
    extract_timeout_seconds: float = Field(60.0, gt=0)
    progress_interval_seconds: float = Field(2.0, gt=0)

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
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def vector_store_url(self) -> str:
        return self.vector_store or f"lancedb://{self.home.resolve()}/vectors"

    @property
    def metadata_store_url(self) -> str:
        return self.metadata_store or f"sqlite:///{self.home.resolve()}/state.db"

    # --- signals (issue #3): defaults for feature sets not declared in headwater.toml ---------
    feature_set: str = "default"
    windows: list[str] = Field(default_factory=lambda: ["1s", "5s", "1m"])
    lateness_ms: int = Field(2000, ge=0)
    late_policy: str = Field("drop", pattern="^(drop|hold|correct)$")
    correct_horizon_ms: int = Field(600_000, ge=0)
    ewma_alpha: float = Field(0.1, gt=0, le=1)
    max_payload_bytes: int = Field(65_536, ge=64)
    max_future_ms: int = Field(86_400_000, ge=0)
    # Per-batch costs (the online serving view: one row per entity and window size; three Parquet
    # parts; two fsyncs) are fixed, so larger batches amortize them: 250k events ran ~15% faster
    # than 100k (bench/signals.py) for ~90 MiB more peak memory.
    micro_batch_events: int = Field(250_000, ge=1)
    checkpoint_interval_seconds: float = Field(1.0, ge=0)
    feature_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)  # [feature_sets.NAME] tables

    # --- streaming (issue #4) ---------------------------------------------------------------------
    bus: str = "memory://default"  # nats://host:4222 | redis://host:6379/0; memory:// is in-process only
    worker_batch_size: int = Field(DEFAULTS["worker_batch_size"], ge=1)
    ack_wait_seconds: float = Field(30.0, gt=0)
    idle_timeout_seconds: float = Field(30.0, gt=0)  # a quiet stream closes its open windows
    drain_seconds: float = Field(30.0, ge=0)  # SIGTERM: time the in-flight batch gets to commit
    online_store: str | None = None  # default: sqlite:///{home}/features.db
    offline_store: str | None = None  # default: {home}/offline (Parquet, hive-partitioned)

    # --- operating it (issue #5) --------------------------------------------------------------------
    api_token: SecretStr | None = None  # bearer token of `headwater serve`; required off loopback
    max_concurrent_jobs: int = Field(1, ge=1)  # jobs the server runs at once (more wait by priority)
    api_max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    api_page_limit: int = Field(500, ge=1)  # most items one list response returns
    api_source_roots: list[Path] = Field(default_factory=list)  # folders jobs may read; [] = the cwd
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")

    @property
    def online_store_url(self) -> str:
        return self.online_store or f"sqlite:///{self.home.resolve()}/features.db"

    @property
    def offline_store_url(self) -> str:
        return self.offline_store or f"file://{self.home.resolve()}/offline"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into a ConfigError that names the field."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        msg = f"invalid configuration: {problems}"
        raise ConfigError(msg) from exc
