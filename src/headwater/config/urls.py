"""The store URLs a home gets when none is configured, and the names of its index generations."""

from __future__ import annotations

from pathlib import Path


def generation_name(stem: str, generation: int) -> str:
    """``vectors``, ``state`` for a home's first index; ``vectors-g2``, ``state-g2`` for the
    second (an embedder --rebuild) and so on."""
    return stem if generation == 0 else f"{stem}-g{generation}"


def default_vector_store_url(home: Path, generation: int) -> str:
    return f"lancedb://{home.resolve()}/{generation_name('vectors', generation)}"


def default_metadata_store_url(home: Path, generation: int) -> str:
    return f"sqlite:///{home.resolve()}/{generation_name('state', generation)}.db"


def default_online_store_url(home: Path) -> str:
    return f"sqlite:///{home.resolve()}/features.db"


def default_offline_store_url(home: Path) -> str:
    return f"file://{home.resolve()}/offline"
