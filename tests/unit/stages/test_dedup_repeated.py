"""The sort-based candidate filter of dedup flags exactly the rows ``is_duplicated`` flags."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from headwater.stages.dedup import _repeated


@pytest.mark.parametrize("seed", range(5))
def test_repeated_matches_is_duplicated(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(0, 5000))
    pool = rng.integers(0, 2**64 - 1, size=max(size // 3, 1), dtype=np.uint64, endpoint=True)
    values = np.concatenate((rng.choice(pool, size), rng.integers(0, 2**64 - 1, size, dtype=np.uint64)))
    rng.shuffle(values)
    hashes = pl.Series("hash", values, dtype=pl.UInt64)
    assert _repeated(hashes).to_list() == hashes.is_duplicated().to_list()


def test_repeated_edges() -> None:
    for values in ([], [7], [7, 7], [0, 2**64 - 1, 0], [5, 6, 7]):
        hashes = pl.Series("hash", values, dtype=pl.UInt64)
        assert _repeated(hashes).to_list() == hashes.is_duplicated().to_list()
