"""Reading a feature set's offline history back: ``features export`` and the tests' oracle."""

from __future__ import annotations

from typing import Any

from headwater.models import Dataset
from headwater.ports import OfflineFeatureStore

LATE_KEY = ["entity_id", "feature_set", "version", "content_hash", "window_ms", "window_start_ms"]
"""One late row: an event (by its content hash) and a window it missed."""


def export_key(dataset: Dataset, columns: list[str]) -> list[str]:
    """The columns one exported row is unique on (windows: ``stages.features.FEATURE_ROW_KEY``):
    a point is its event (envelope and field values), a late row its event and window."""
    if dataset is Dataset.late:
        return LATE_KEY
    return [c for c in columns if c not in ("_part", "date") and not c.endswith(("_ewma", "_zscore"))]


async def export_rows(
    offline: OfflineFeatureStore, feature_set: str, *, dataset: Dataset | str = Dataset.windows
) -> Any:
    """Offline history collapsed to one row per key: the highest revision, then the latest part.
    A window row's merge state (``_state``, under ``hold``) is not a feature: left out."""
    dataset = Dataset(dataset)
    frame = await offline.read(dataset, feature_set)
    if frame.height == 0:
        return frame
    from headwater.stages.features import FEATURE_ROW_KEY, STATE_COLUMN, latest_rows

    if dataset is Dataset.windows:
        return latest_rows(frame).drop("_part", STATE_COLUMN, strict=False).sort(list(FEATURE_ROW_KEY))
    keys = export_key(dataset, frame.columns)
    latest = frame.sort([*keys, "_part"]).unique(subset=keys, keep="last", maintain_order=True)
    return latest.drop("_part").sort(keys)
