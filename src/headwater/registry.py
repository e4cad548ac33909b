"""URL scheme → adapter class, imported lazily so a missing extra costs nothing until used.

Adding an adapter is one line here plus its module; an unknown scheme or a missing extra is a
ConfigError that says which extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from headwater.errors import ConfigError

# kind → scheme → (module:Class, pip extra or None when it ships with the core)
ADAPTERS: dict[str, dict[str, tuple[str, str | None]]] = {
    "source": {
        "file": ("headwater.adapters.files:FileSource", None),
        "s3": ("headwater.adapters.object_store:ObjectStoreSource", "s3"),
        "gs": ("headwater.adapters.object_store:ObjectStoreSource", "gcs"),
        "gcs": ("headwater.adapters.object_store:ObjectStoreSource", "gcs"),
        "az": ("headwater.adapters.object_store:ObjectStoreSource", "azure"),
        "abfs": ("headwater.adapters.object_store:ObjectStoreSource", "azure"),
        "http": ("headwater.adapters.http:HttpSource", "http"),
        "https": ("headwater.adapters.http:HttpSource", "http"),
        "urls+file": ("headwater.adapters.http:HttpSource", "http"),
    },
    "embedder": {
        "hash": ("headwater.adapters.hashembed:HashEmbedder", None),
        "minilm": ("headwater.adapters.minilm:MiniLMEmbedder", "local"),
        "openai": ("headwater.adapters.openai:OpenAIEmbedder", "openai"),
        "http": ("headwater.adapters.openai:OpenAIEmbedder", "openai"),
        "https": ("headwater.adapters.openai:OpenAIEmbedder", "openai"),
    },
    "vector_store": {
        "lancedb": ("headwater.adapters.lancedb:LanceVectorStore", None),
        "faiss": ("headwater.adapters.faiss:FaissVectorStore", "faiss"),
        "pgvector": ("headwater.adapters.pgvector:PgVectorStore", "pgvector"),
        "chroma": ("headwater.adapters.chroma:ChromaVectorStore", "chroma"),
    },
    "metadata_store": {
        "sqlite": ("headwater.adapters.sqlite:SQLiteMetadataStore", None),
        "postgresql": ("headwater.adapters.postgres:PostgresMetadataStore", "postgres"),
        "postgres": ("headwater.adapters.postgres:PostgresMetadataStore", "postgres"),
    },
    "job_store": {
        "sqlite": ("headwater.adapters.sqlite_jobs:SQLiteJobStore", None),
        "postgresql": ("headwater.adapters.postgres.jobs:PostgresJobStore", "postgres"),
        "postgres": ("headwater.adapters.postgres.jobs:PostgresJobStore", "postgres"),
    },
    "online_store": {
        "sqlite": ("headwater.adapters.sqlite_features:SQLiteFeatureStore", None),
        "redis": ("headwater.adapters.redis_features:RedisFeatureStore", "redis"),
    },
    "bus": {
        "memory": ("headwater.adapters.memory:MemoryBus", None),
        "nats": ("headwater.adapters.nats:NatsBus", "nats"),
        "redis": ("headwater.adapters.redis:RedisBus", "redis"),
        "kafka": ("headwater.adapters.kafka:KafkaBus", "kafka"),
    },
    "offline_store": {
        "file": ("headwater.adapters.parquet:ParquetOfflineStore", None),
        "parquet": ("headwater.adapters.parquet:ParquetOfflineStore", None),
        "delta": ("headwater.adapters.delta:DeltaOfflineStore", "delta"),
        "delta+s3": ("headwater.adapters.delta:DeltaOfflineStore", "delta"),
    },
}


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme
    # A bare path or a Windows drive letter is a local file.
    return "file" if len(scheme) <= 1 else scheme


def resolve(kind: str, url: str) -> type[Any]:
    schemes = ADAPTERS.get(kind)
    if schemes is None:
        msg = f"unknown adapter kind {kind!r}"
        raise ConfigError(msg)
    scheme = scheme_of(url)
    if scheme not in schemes:
        known = ", ".join(f"{s}://" for s in sorted(schemes))
        msg = f"no {kind.replace('_', ' ')} for {url!r}: scheme {scheme!r} is not one of {known}"
        raise ConfigError(msg)
    target, extra = schemes[scheme]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'headwater[{extra}]'" if extra else "reinstall headwater"
        msg = f"{scheme}:// needs a package that is not installed ({exc.name}): {hint}"
        raise ConfigError(msg) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def create(kind: str, url: str, **kwargs: Any) -> Any:
    """Instantiate the adapter for ``url``; constructors do no I/O (``open()`` connects)."""
    return resolve(kind, url)(url, **kwargs)
