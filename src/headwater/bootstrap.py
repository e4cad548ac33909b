"""The composition root: Settings → registry → adapters → pipeline. The CLI, the server and the
tests all build pipelines here, so they run the same wiring.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any, cast

from headwater import registry
from headwater.config import Settings
from headwater.pipeline.documents import DocumentPipeline
from headwater.ports import Embedder, MetadataStore, Source, VectorStore


def make_source(url: str, settings: Settings) -> Source:
    return cast(Source, registry.create("source", url, include=settings.include, exclude=settings.exclude))


def make_embedder(settings: Settings) -> Embedder:
    """The configured embedder; one whose constructor takes a ``preset`` (a rate-limited remote
    embedder) gets ``settings.preset``, so one setting sizes both the pipeline and the limiter."""
    cls = registry.resolve("embedder", settings.embedder)
    takes_preset = settings.preset is not None and "preset" in inspect.signature(cls).parameters
    options = {"preset": settings.preset} if takes_preset else {}
    return cast(Embedder, cls(settings.embedder, **options))


def make_vector_store(settings: Settings) -> VectorStore:
    return cast(VectorStore, registry.create("vector_store", settings.vector_store_url))


def make_metadata_store(settings: Settings) -> MetadataStore:
    return cast(MetadataStore, registry.create("metadata_store", settings.metadata_store_url))


def build_document_pipeline(
    settings: Settings, source_url: str, *, only: Collection[str] | None = None, **overrides: Any
) -> DocumentPipeline:
    """Wire a document pipeline; ``overrides`` replace adapters (tests inject failing embedders)."""
    return DocumentPipeline(
        source=overrides.get("source") or make_source(source_url, settings),
        embedder=overrides.get("embedder") or make_embedder(settings),
        vectors=overrides.get("vectors") or make_vector_store(settings),
        metadata=overrides.get("metadata") or make_metadata_store(settings),
        settings=settings,
        only=only,
    )
