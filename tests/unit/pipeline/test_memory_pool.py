"""A backfill allocates Arrow's buffers from jemalloc (``prefer_jemalloc``), unless the user named
a pool in ``ARROW_DEFAULT_MEMORY_POOL``: under mimalloc, Arrow's default, reading a batch's
Parquet took erratically longer (bench/README)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from test_signal_pipeline import run, write_jsonl

from headwater.pipeline.signal_inputs import prefer_jemalloc

sys.path.insert(0, str(Path(__file__).parents[1] / "stages"))
from signal_reference import generate


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.fixture(autouse=True)
def system_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start from another pool, with the choice not made yet; put the process's pool back after."""
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    prefer_jemalloc.cache_clear()
    yield
    prefer_jemalloc.cache_clear()
    pa.set_memory_pool(before)


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow has no jemalloc")
def test_a_backfill_reads_into_jemalloc(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(inputs / "events.jsonl", generate(seed=5, n=200), {})
    asyncio.run(run(tmp_path / "home", inputs, batch=100))
    assert pa.default_memory_pool().backend_name == "jemalloc"


def test_the_pool_the_user_named_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    prefer_jemalloc()
    assert pa.default_memory_pool().backend_name == "system"


def test_a_pyarrow_without_jemalloc_keeps_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> pa.MemoryPool:
        raise pa.ArrowNotImplementedError("This Arrow build does not enable jemalloc")

    monkeypatch.setattr(pa, "jemalloc_memory_pool", missing)
    prefer_jemalloc()
    assert pa.default_memory_pool().backend_name == "system"
