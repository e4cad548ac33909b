"""A shorter GIL switch interval while a backfill's stages overlap.

A signal backfill reads and decodes batch k + 1 in one thread while another computes batch k.
Decoding JSON holds the GIL throughout (it makes Python objects); the engine is hundreds of
NumPy and Polars calls per batch, each releasing the GIL and taking it back. Under CPython's
default 5 ms interval, each take-back waits up to 5 ms for the decoding thread to yield, which
more than doubled the engine step's wall time. At 0.5 ms the climate benchmark runs ~4 % faster
(bench/README.md); Parquet input, which decodes without holding the GIL, is unchanged.

The interval is process-wide: it is lowered while at least one run holds it and the value found
before the first is put back when the last ends, however it ends.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

HANDOVER_SECONDS = 0.0005


class _Holders:
    """How many runs hold the short interval, and the interval found before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.saved = 0.0


_HOLDERS = _Holders()


@contextlib.contextmanager
def quick_gil_handover(seconds: float = HANDOVER_SECONDS) -> Iterator[None]:
    """Within the block the switch interval is at most ``seconds``."""
    holders = _HOLDERS
    with holders.lock:
        if holders.count == 0:
            holders.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(seconds, holders.saved))
        holders.count += 1
    try:
        yield
    finally:
        with holders.lock:
            holders.count -= 1
            if holders.count == 0:
                sys.setswitchinterval(holders.saved)
