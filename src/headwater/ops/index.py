"""Operations on a built index: fingerprint and status, verify and repair, optimize, export.

They read the vector store itself, not only our bookkeeping, because bookkeeping is exactly
what a crash or an external delete makes wrong.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from headwater.adapters.lancedb import TABLE as LANCE_TABLE
from headwater.compose import build_document_pipeline, open_index
from headwater.config import Settings
from headwater.homelock import home_lock
from headwater.models import DocState
from headwater.ops.search import chunk_dict
from headwater.ports import Compactable, DocumentReader, MetadataStore, VectorReader, VectorWriter
from headwater.redaction import redact_url


async def status(settings: Settings) -> dict[str, Any]:
    """Counts plus ``fingerprint``: sha256 of the sorted ``doc_id\\tchunk_id\\tchunk_hash\\n`` lines
    read from the vector store; equal fingerprints mean equal indexes."""
    async with open_index(settings) as (metadata, vectors, embedder):
        counts = await metadata.counts()
        lines = sorted([f"{c.doc_id}\t{c.chunk_id}\t{c.chunk_hash}\n" async for c in vectors.scan()])
        digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
        return {
            **counts,
            "vectors": len(lines),
            "fingerprint": digest,
            "embedder": embedder.id,
            "vector_store": redact_url(settings.vector_store_url),
            "home": str(settings.home),
        }


async def optimize(settings: Settings) -> None:
    """Compact the vector store, fold new rows into its indexes and drop old versions: the
    maintenance an ingest skips on large tables (it reads the whole table), for a quiet hour."""
    lock = home_lock(settings.home, wait=settings.wait_for_home)
    async with lock, open_index(settings) as (_metadata, vectors, _embedder):
        if isinstance(vectors, Compactable):
            await vectors.optimize()


@dataclass
class VerifyReport:
    lost: list[str] = field(default_factory=list)  # in metadata, missing from the vector store
    orphans: list[str] = field(default_factory=list)  # in the vector store, unknown to metadata
    duplicates: list[str] = field(default_factory=list)  # stored more than once
    drift: list[str] = field(default_factory=list)  # same id, different doc or hash
    incomplete: list[str] = field(default_factory=list)  # documents left mid-update by a crash
    affected_docs: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.orphans or self.duplicates or self.drift or self.incomplete)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lost": self.lost,
            "orphans": self.orphans,
            "duplicates": self.duplicates,
            "drift": self.drift,
            "incomplete": self.incomplete,
        }


async def verify(settings: Settings, *, repair: bool = False) -> tuple[VerifyReport, VerifyReport | None]:
    """Compare metadata with the vector store; with ``repair``, fix it and verify again.

    It holds the writer lock while it compares (a run in progress is not a disagreement: it
    waits for it) and lets go of it for the repairing runs, which take it themselves."""
    async with home_lock(settings.home, wait=settings.wait_for_home), open_index(settings) as index:
        metadata, vectors, _embedder = index
        report = await _compare(metadata, vectors)
        if not repair or report.ok:
            return report, None
        sources = await _repair_marks(metadata, vectors, report)
    for source, relpaths in sources.items():
        await build_document_pipeline(settings, source, only=relpaths).run_async()
    async with home_lock(settings.home, wait=settings.wait_for_home), open_index(settings) as index:
        return report, await _compare(index[0], index[1])


async def _compare(metadata: DocumentReader, vectors: VectorReader) -> VerifyReport:
    expected = {k.chunk_id: (k.doc_id, k.chunk_hash) async for k in metadata.chunk_keys()}
    stored: Counter[str] = Counter()
    report = VerifyReport()
    async for chunk in vectors.scan():
        stored[chunk.chunk_id] += 1
        want = expected.get(chunk.chunk_id)
        if want is None:
            report.orphans.append(chunk.chunk_id)
            report.affected_docs.add(chunk.doc_id)
        elif want != (chunk.doc_id, chunk.chunk_hash):
            report.drift.append(chunk.chunk_id)
            report.affected_docs.update({chunk.doc_id, want[0]})
    for chunk_id, n in stored.items():
        if n > 1:
            report.duplicates.append(chunk_id)
            report.affected_docs.add(expected.get(chunk_id, ("", ""))[0])
    for chunk_id, (doc_id, _) in expected.items():
        if chunk_id not in stored:
            report.lost.append(chunk_id)
            report.affected_docs.add(doc_id)
    counts = await metadata.counts()
    for status in ("pending", "cleanup", "deleting"):
        if counts.get(f"documents_{status}"):
            report.incomplete.append(f"{counts[f'documents_{status}']} documents {status}")
    report.affected_docs.discard("")
    return report


async def _repair_marks(
    metadata: MetadataStore, vectors: VectorWriter, report: VerifyReport
) -> dict[str, set[str]]:
    """Drop the affected documents' vectors and mark them pending; returns what to re-ingest."""
    states = await metadata.get_documents(sorted(report.affected_docs))
    unknown = report.affected_docs - set(states)
    await vectors.delete_stale({doc_id: set() for doc_id in report.affected_docs})
    incomplete = [d async for d in _incomplete_docs(metadata)]
    redo = list(states.values()) + incomplete
    # Their chunk keys go too, so the re-run writes every chunk again instead of trusting them.
    await metadata.commit(
        [DocState(**{**msgspec.structs.asdict(d), "status": "pending"}) for d in redo],
        {d.doc_id: [] for d in redo},
    )
    sources: dict[str, set[str]] = {}
    for doc in redo:
        sources.setdefault(doc.source, set()).add(doc.uri)
    del unknown  # vectors of documents metadata never knew are simply removed
    return sources


async def _incomplete_docs(metadata: DocumentReader) -> AsyncIterator[DocState]:
    for state in await metadata.documents_with_status(["pending", "cleanup", "deleting"]):
        yield state


def has_index(settings: Settings) -> bool:
    """Whether the home's vector store has been created (by a first ingest), checked without
    creating it. A store that is not a local LanceDB folder is taken to exist."""
    parts = urlsplit(settings.vector_store_url)
    if parts.scheme != "lancedb":
        return True
    return (Path(parts.netloc + parts.path) / f"{LANCE_TABLE}.lance").is_dir()


async def export(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    async with open_index(settings) as (_metadata, vectors, _embedder):
        async for chunk in vectors.scan():
            yield chunk_dict(chunk)
