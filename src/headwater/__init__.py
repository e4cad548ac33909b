"""headwater: ingest documents and time-series signals for AI systems.

The pipelines are imported on first use, so ``import headwater`` (and every CLI command) stays
fast and a documents run never loads the signals engine.
"""

from typing import TYPE_CHECKING, Any

from headwater.config import Settings, load_settings
from headwater.errors import (
    AdapterError,
    ConfigError,
    HeadwaterError,
    InputError,
    PermanentError,
    RetryableError,
)

if TYPE_CHECKING:
    from headwater.compose import build_document_pipeline
    from headwater.pipeline.documents import DocumentPipeline
    from headwater.pipeline.signals import SignalPipeline

_LAZY = {
    "DocumentPipeline": "headwater.pipeline.documents",
    "SignalPipeline": "headwater.pipeline.signals",
    "build_document_pipeline": "headwater.compose",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'headwater' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "AdapterError",
    "ConfigError",
    "DocumentPipeline",
    "HeadwaterError",
    "InputError",
    "PermanentError",
    "RetryableError",
    "Settings",
    "SignalPipeline",
    "build_document_pipeline",
    "load_settings",
]
__version__ = "0.1.0"
