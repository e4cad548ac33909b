"""Reading a feature set's offline history back: ``features export`` and the tests' oracle."""

from __future__ import annotations

from typing import Any

from headwater.models import Dataset
from headwater.ports import OfflineFeatureStore

EXPORT_KEYS = {  # windows: stages.features.FEATURE_ROW_KEY (imported with polars, when exporting)
    Dataset.points: ["entity_id", "feature_set", "version", "event_time", "sequence", "value"],
    Dataset.late: [
        "entity_id",
        "feature_set",
        "version",
        "event_time",
        "sequence",
        "value",
        "extra",
        "window_ms",
        "window_start_ms",
    ],
}


async def export_rows(
    offline: OfflineFeatureStore, feature_set: str, *, dataset: Dataset | str = Dataset.windows
) -> Any:
    """Offline history collapsed to one row per key: the highest revision, then the latest part."""
    dataset = Dataset(dataset)
    frame = await offline.read(dataset, feature_set)
    if frame.height == 0:
        return frame
    from headwater.stages.features import FEATURE_ROW_KEY, latest_rows

    if dataset is Dataset.windows:
        return latest_rows(frame).drop("_part").sort(list(FEATURE_ROW_KEY))
    keys = EXPORT_KEYS[dataset]
    latest = frame.sort([*keys, "_part"]).unique(subset=keys, keep="last", maintain_order=True)
    return latest.drop("_part").sort(keys)
