"""Named operating profiles (seed 004's local / standard / high-throughput): data, not code.

A preset is a set of defaults for the knobs that trade memory and load for throughput: how
many documents are prepared and embedded at once, how large the batches and queues are, and the
bounds of the embedder's adaptive rate limiter. It is the one table both ``Settings`` (which
takes its own defaults from ``standard``) and the rate limiter (``LIMITER_PRESETS``) read, so a
profile cannot drift apart between the two. Choosing one (``HEADWATER_PRESET``, ``preset`` in
``headwater.toml``, ``--preset``) only fills in what the user did not set explicitly.

This module imports nothing from headwater, so config and the pipeline can both depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Preset:
    """One profile.

    Attributes:
        settings: values for ``Settings`` fields of the same names.
        limiter: keyword arguments of ``LimiterConfig`` (rates in requests per second).
    """

    name: str
    description: str
    settings: Mapping[str, int] = field(default_factory=dict)
    limiter: Mapping[str, float] = field(default_factory=dict)


def _preset(name: str, description: str, settings: dict[str, int], limiter: dict[str, float]) -> Preset:
    return Preset(name, description, MappingProxyType(settings), MappingProxyType(limiter))


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            _preset(
                "local",
                "a laptop or a local model server (Ollama): little memory, few requests at once",
                {
                    "concurrency": 2,
                    "workers": 2,
                    "embed_batch_size": 32,
                    "commit_batch_chunks": 256,
                    "queue_size": 64,
                    "worker_batch_size": 100,
                },
                {"rate_per_second": 2, "burst": 2, "min_rate_per_second": 0.2, "max_rate_per_second": 10},
            ),
            _preset(
                "standard",
                "the defaults: one machine, a hosted embedding API on an ordinary rate tier",
                {
                    "concurrency": 4,
                    "workers": 0,  # one extraction process per core
                    "embed_batch_size": 256,
                    "commit_batch_chunks": 2048,
                    "queue_size": 256,
                    "worker_batch_size": 1000,
                },
                {"rate_per_second": 10, "burst": 10, "min_rate_per_second": 0.5, "max_rate_per_second": 50},
            ),
            _preset(
                "high-throughput",
                "a large machine and a high rate tier or a self-hosted GPU server (vLLM, TEI)",
                {
                    "concurrency": 16,
                    "workers": 0,
                    "embed_batch_size": 512,
                    "commit_batch_chunks": 8192,
                    "queue_size": 1024,
                    "worker_batch_size": 5000,
                },
                {"rate_per_second": 50, "burst": 50, "min_rate_per_second": 1, "max_rate_per_second": 500},
            ),
        )
    }
)

DEFAULT_PRESET = "standard"
DEFAULTS: Mapping[str, int] = PRESETS[DEFAULT_PRESET].settings
"""Settings' own defaults for the preset-controlled fields."""


def get_preset(name: str) -> Preset:
    """The named preset; ValueError names the choices (callers wrap it in their own error)."""
    try:
        return PRESETS[name]
    except KeyError:
        msg = f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        raise ValueError(msg) from None
