"""Where documents come from: a tree of objects, listed in pages, read whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from headwater.errors import InputError
from headwater.models import (
    SourceEntry,
)


@runtime_checkable
class Source(Protocol):
    """A tree of documents (a local folder, a bucket prefix).

    ``scan`` streams entries in a deterministic order, in pages (a folder walk's batch, an object
    store's listing page), and never yields anything outside the root; it raises if the listing
    itself fails, so a partial listing never looks like deletions.
    """

    uri: str

    def scan(self) -> AsyncIterator[list[SourceEntry]]:
        """Pages, not single entries: a no-change re-run of 100k files is this listing, and an
        async hand-off per entry was a tenth of it."""
        ...

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        """Entries for just these paths, as ``scan`` would list them; absent ones are left out
        (a stream worker processes changed paths without listing the whole tree)."""
        ...

    async def read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        """Whole object; raises InputError when unreadable or larger than ``max_bytes``."""
        ...

    async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        """``read`` of each entry, in order, an unreadable one as its InputError in its place.

        A cold run reads thousands of small files: one hand-off to a thread per batch instead
        of one per file, each waiting for the GIL, was most of the time its scan spent reading."""
        ...


@runtime_checkable
class Countable(Protocol):
    """Optional for sources: how many entries ``scan`` will list, known well before the listing
    ends (it is paced by the work it feeds): a run's progress total and ETA."""

    async def count(self) -> int: ...
