"""The counts behind BatchProgress, and the ETA arithmetic."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Counts for BatchProgress; the ETA assumes the rate of the run so far."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.listed = 0
        self.listing_done = False
        self.counted: int | None = None  # the source's count, ahead of the listing (ports.Countable)
        self.completed = 0
        self.failed = 0
        self.skipped = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.skipped

    @property
    def total(self) -> int | None:
        """Exact once the listing is done; until then the count, if the source could give one
        (files added or removed meanwhile make it an estimate)."""
        if self.listing_done:
            return self.listed
        return max(self.counted, self.listed) if self.counted is not None else None

    def eta_seconds(self) -> float | None:
        elapsed = self.clock() - self.started
        total = self.total
        if total is None or self.finished == 0 or elapsed <= 0:
            return None
        rate = self.finished / elapsed
        return max(0.0, (total - self.finished) / rate)
