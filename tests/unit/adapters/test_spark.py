"""The Spark compute setting and the slicing of signal inputs (no JVM here: see test_spark_signals)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.adapters.spark import open_session, spark_master
from headwater.errors import ConfigError
from headwater.pipeline.signal_inputs import count_lines, list_inputs, read_chunks, read_slice
from headwater.pipeline.signal_spark import plan_slices
from headwater.stages.decode import DecodeLimits


@pytest.mark.parametrize(
    ("setting", "master"),
    [
        ("local", None),
        ("", None),
        ("spark", "local[*]"),
        ("local[2]", "local[2]"),
        ("local[*]", "local[*]"),
        ("spark://10.0.0.5:7077", "spark://10.0.0.5:7077"),
        ("spark://a:7077,b:7077", "spark://a:7077,b:7077"),
        ("yarn", "yarn"),
        ("k8s://https://k8s.example:6443", "k8s://https://k8s.example:6443"),
    ],
)
def test_compute_settings_name_a_master(setting: str, master: str | None) -> None:
    assert spark_master(setting) == master


@pytest.mark.parametrize("setting", ["sparks", "local[two]", "spark://", "mesos://x", "local[2] "[:-1] + "x"])
def test_a_wrong_compute_setting_is_one_clear_line(setting: str) -> None:
    with pytest.raises(ConfigError, match="is not an engine: use local"):
        spark_master(setting)


def _limits() -> DecodeLimits:
    return DecodeLimits(now_ms=2_000_000_000_000, max_future_ms=86_400_000, max_record_bytes=65_536)


def _line(i: int) -> str:
    event = {"entity_id": "e", "event_time": 1_700_000_000_000 + i, "sequence": i, "payload": {"value": i}}
    return json.dumps(event)


def test_slices_cover_every_record_once_in_arrival_order(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n".join(_line(i) for i in range(23)) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(_line(i) for i in range(23, 30)))  # no final newline
    (tmp_path / "c.csv").write_text("entity_id,event_time,sequence,value\n" + "e,1700000000100,100,1.5\n" * 4)
    (tmp_path / "empty.jsonl").write_text("")
    table = pa.table({"entity_id": ["p"] * 12, "event_time": list(range(12)), "sequence": list(range(12))})
    pq.write_table(table.append_column("value", pa.array([1.0] * 12)), tmp_path / "d.parquet")
    files = list_inputs(tmp_path)
    assert [count_lines(f) for f in files] == [23, 7, 4, 12, 0]
    slices = plan_slices(files, 5)
    assert [(s.file_index, s.start) for s in slices][:6] == [
        (0, 0),
        (0, 5),
        (0, 10),
        (0, 15),
        (0, 20),
        (1, 0),
    ]
    assert [s.number for s in slices] == list(range(len(slices)))
    sliced = [read_slice(files[s.file_index], s.file_index, s.start, s.count, _limits()) for s in slices]
    whole = list(read_chunks(files, 0, 0, 5, _limits()))
    assert [(c.file_index, c.start, c.consumed) for c in sliced] == [
        (c.file_index, c.start, c.consumed) for c in whole
    ]
    assert all(a.frame.equals(b.frame) for a, b in zip(sliced, whole, strict=True))


def test_spark_without_pyspark_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark now raises ImportError
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(ConfigError, match=r"pip install 'headwater\[spark\]'"):
        open_session("local[1]")


def test_spark_without_java_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyspark")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="no Java runtime was found: install Java 17"):
        open_session("local[1]")
