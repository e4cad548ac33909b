"""The pure parts of document backfills on Spark: which stores may be shared, and the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.adapters.spark import run_spark
from headwater.config import Settings
from headwater.errors import ConfigError, HeadwaterError, StoreUnavailable
from headwater.events import RunCompleted
from headwater.pipeline.document_spark import _merged, check_shared_stores


def _settings(tmp_path: Path, **stores: str) -> Settings:
    return Settings(home=tmp_path, **stores)


@pytest.mark.parametrize("vectors", ["pgvector://u@db:5432/hw?table=v", "chroma://chroma.internal:8000/docs"])
def test_servers_every_executor_reaches_are_accepted(tmp_path: Path, vectors: str) -> None:
    check_shared_stores(_settings(tmp_path, metadata_store="postgresql://u@db/hw", vector_store=vectors))


@pytest.mark.parametrize(
    ("stores", "says"),
    [
        ({}, "needs a metadata store every executor reaches, not sqlite://"),
        ({"metadata_store": "postgresql://u@db/hw"}, "not lancedb:// in one home"),
        ({"metadata_store": "postgresql://u@db/hw", "vector_store": "faiss:///tmp/f"}, "not faiss://"),
    ],
)
def test_a_homes_own_stores_are_refused_in_one_line(
    tmp_path: Path, stores: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        check_shared_stores(_settings(tmp_path, **stores))


def test_the_summary_counts_each_document_once() -> None:
    """Tasks added 8 and updated 2; the closing pass saw those 10 as unchanged beside 5 others,
    deleted 1 and retried the one failure, which failed again."""
    spark = dict.fromkeys(RunCompleted.__struct_fields__, 0)
    spark |= {"documents_added": 8, "documents_updated": 2, "documents_failed": 1, "chunks_embedded": 40}
    spark |= {"embed_calls": 3, "documents_unchanged": 5}
    closing = RunCompleted(
        run_id="r", documents_seen=16, documents_unchanged=15, documents_deleted=1, documents_failed=1,
        chunks_deleted=4,
    )  # fmt: skip
    merged = _merged(closing, spark, 1.5)
    assert (merged.documents_seen, merged.documents_added, merged.documents_updated) == (16, 8, 2)
    assert (merged.documents_unchanged, merged.documents_deleted, merged.documents_failed) == (5, 1, 1)
    assert (merged.chunks_embedded, merged.chunks_deleted, merged.embed_calls) == (40, 4, 3)


def test_a_failed_spark_task_becomes_the_error_it_raised() -> None:
    java_side = (
        "An error occurred while calling o71.collect.\n: org.apache.spark.SparkException: Job aborted\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in task\n'
        "headwater.errors.StoreUnavailable: pgvector at db:5432 refused the connection\n\tat org.apache..."
    )

    def fails(text: str) -> None:
        raise RuntimeError(text)

    with pytest.raises(StoreUnavailable, match="a Spark task failed: pgvector at db:5432 refused"):
        run_spark(lambda: fails(java_side))
    with pytest.raises(HeadwaterError, match="Spark failed: boom"):
        run_spark(lambda: fails("Job aborted\nboom"))
    assert run_spark(lambda: 7) == 7
