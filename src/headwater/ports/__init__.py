"""The ports: what the pipelines need from the outside world, as Protocols.

Adapters live in ``headwater.adapters`` and are chosen by URL scheme (``registry.py``). A
constructor only records its URL (cheap, picklable); ``open()`` connects. Every method that writes
is idempotent unless its port says otherwise, because the engine replays work after a crash
rather than trusting bookkeeping.

Each port is small and says when its methods are called, what is idempotent and what is durable
when a call returns. One adapter often implements several (the SQLite metadata store holds
documents, dead letters, the embedding cache and settings): the composite Protocols
(``MetadataStore``, ``FeatureStore``, ``StreamBus``, ``VectorStore``) name those bundles, while
code that uses only part of a store is annotated with the small port it uses. Optional ports
(``Countable``, ``LoadsModel``, ``RateLimited``, ``Compactable``, ``Snapshots``,
``SearchesByPrefix``, ``WatchesState``) are tested with ``isinstance``, never probed with
``getattr``.

One module per concern (``lifecycle``, ``sources``, ``embedders``, ``vectors``, ``metadata``,
``features``, ``streaming``, ``jobs``); import the ports from here.
"""

from __future__ import annotations

from headwater.ports.embedders import Embedder, LoadsModel, RateLimited
from headwater.ports.features import (
    FeatureRows,
    FeatureStore,
    InvalidRecordOutbox,
    OfflineFeatureStore,
    SignalCheckpoints,
)
from headwater.ports.jobs import JobJournal, JobLeases, JobQueue, JobStore
from headwater.ports.lifecycle import Lifecycle, StateListener, WatchesState
from headwater.ports.metadata import (
    DeadLetters,
    DeadLetterSink,
    DocumentLedger,
    DocumentReader,
    DocumentState,
    EmbeddingCache,
    MetadataStore,
    ScanLog,
    SettingsStore,
)
from headwater.ports.sources import Countable, Source
from headwater.ports.streaming import (
    BusConsumer,
    BusDeadLetters,
    BusPublisher,
    ConsumerLag,
    KeyedPublisher,
    StreamBus,
)
from headwater.ports.vectors import (
    Compactable,
    SearchesByPrefix,
    Snapshots,
    VectorReader,
    VectorStore,
    VectorWriter,
)

__all__ = [
    "BusConsumer",
    "BusDeadLetters",
    "BusPublisher",
    "Compactable",
    "ConsumerLag",
    "Countable",
    "DeadLetterSink",
    "DeadLetters",
    "DocumentLedger",
    "DocumentReader",
    "DocumentState",
    "Embedder",
    "EmbeddingCache",
    "FeatureRows",
    "FeatureStore",
    "InvalidRecordOutbox",
    "JobJournal",
    "JobLeases",
    "JobQueue",
    "JobStore",
    "KeyedPublisher",
    "Lifecycle",
    "LoadsModel",
    "MetadataStore",
    "OfflineFeatureStore",
    "RateLimited",
    "ScanLog",
    "SearchesByPrefix",
    "SettingsStore",
    "SignalCheckpoints",
    "Snapshots",
    "Source",
    "StateListener",
    "StreamBus",
    "VectorReader",
    "VectorStore",
    "VectorWriter",
    "WatchesState",
]
