"""``headwater features feast-repo``: a Feast repository serving a feature set's windows.

For teams whose serving layer is Feast. Feast reads files, not headwater's offline history (a
hive-partitioned dataset holding every window size and every revision), so the repository gets
its own data: per window size, one Parquet file with the latest revision of each window (what
``features export`` gives), stamped with the window's *end*. A point-in-time lookup at time T
then finds, per entity, the last window that had closed by T, and ``feast materialize`` puts the
newest one online, which is the row ``headwater features get`` serves. Run the command again to
refresh the files after more data arrived, then ``feast materialize`` again.

Layout written under ``--out`` (the files are replaced atomically; ``feature_store.yaml`` and
``features.py`` only when their content changes, so a Feast registry stays valid):

    feature_store.yaml        project, local provider, SQLite online store, file offline store
    features.py               Entity ``entity`` (join key ``entity_id``), one FileSource and one
                              FeatureView per window size, named ``{feature_set}_{window}``
    data/{view}.parquet       entity_id, window_end (the event timestamp), window_start, revision,
                              and the feature set's ``{field}_{aggregation}`` columns
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from headwater.errors import ConfigError
from headwater.featuresets import duration_label
from headwater.models import Dataset
from headwater.ops.features import export_rows
from headwater.ports import OfflineFeatureStore

_KEY = ("entity_id", "feature_set", "version", "window_ms", "window_start_ms", "revision", "date")
_FEAST_TYPES = {
    "Float64": "Float64",
    "Int64": "Int64",
    "Int32": "Int32",
    "String": "String",
    "Boolean": "Bool",
}


def _name(text: str) -> str:
    """A Feast object name: letters, digits and underscores."""
    return re.sub(r"\W+", "_", text).strip("_") or "headwater"


async def write_feast_repo(offline: OfflineFeatureStore, feature_set: str, out: Path) -> dict[str, int]:
    """Write the repository; returns the rows written per feature view."""
    import polars as pl

    rows = await export_rows(offline, feature_set, dataset=Dataset.windows)
    if rows.height == 0:
        msg = f"feature set {feature_set!r} has no window rows in the offline store yet: ingest signals first"
        raise ConfigError(msg)
    features = [c for c in rows.columns if c not in _KEY]
    views: dict[str, int] = {}
    sources: list[tuple[str, Path]] = []
    (out / "data").mkdir(parents=True, exist_ok=True)
    for (window_ms,), frame in sorted(rows.partition_by("window_ms", as_dict=True).items()):
        view = _name(f"{feature_set}_{duration_label(int(window_ms))}")
        data = frame.sort("entity_id", "window_start_ms").select(
            "entity_id",
            pl.from_epoch(pl.col("window_start_ms") + pl.col("window_ms"), time_unit="ms")
            .dt.replace_time_zone("UTC")
            .alias("window_end"),
            pl.from_epoch("window_start_ms", time_unit="ms")
            .dt.replace_time_zone("UTC")
            .alias("window_start"),
            "revision",
            *features,
        )
        path = (out / "data" / f"{view}.parquet").resolve()
        _replace(path, lambda target, data=data: data.write_parquet(target))
        views[view] = data.height
        sources.append((view, path))
    types = {c: _FEAST_TYPES.get(str(rows.schema[c]), "String") for c in features}
    project = _name(f"headwater_{feature_set}")
    _write_text(out / "feature_store.yaml", _store_yaml(project))
    _write_text(out / "features.py", _definitions(sources, types))
    return views


def _store_yaml(project: str) -> str:
    return (
        f"project: {project}\n"
        "registry: data/registry.db\n"
        "provider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def _definitions(sources: list[tuple[str, Path]], types: dict[str, str]) -> str:
    lines = [
        '"""Written by `headwater features feast-repo`; run it again rather than editing this file."""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Bool, Float64, Int32, Int64, String",
        "",
        'entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.STRING)',
        "",
    ]
    schema = ", ".join(f'Field(name="{name}", dtype={kind})' for name, kind in types.items())
    for view, path in sources:
        lines += [
            f"{view} = FeatureView(",
            f'    name="{view}",',
            "    entities=[entity],",
            "    ttl=timedelta(0),  # no limit: the last closed window stays the answer",
            f"    schema=[{schema}],",
            f'    source=FileSource(name="{view}_source", path={str(path)!r}, timestamp_field="window_end"),',
            ")",
            "",
        ]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    _replace(path, lambda target: target.write_text(text, encoding="utf-8"))


def _replace(path: Path, write: Any) -> None:
    """Write beside ``path`` and rename over it: a reader (feast) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)
