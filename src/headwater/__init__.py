"""headwater: ingest documents and time-series signals for AI systems."""

from headwater.bootstrap import build_document_pipeline
from headwater.config import Settings, load_settings
from headwater.errors import (
    AdapterError,
    ConfigError,
    HeadwaterError,
    InputError,
    PermanentError,
    RetryableError,
)
from headwater.pipeline.documents import DocumentPipeline
from headwater.pipeline.signals import SignalPipeline

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
