"""Exact deduplication with bounded state (DESIGN §5.1).

An event is a duplicate iff an earlier-arriving event has the same identity — (entity_id,
event_time, sequence, payload), the inputs of ``content_hash`` — and that identity is still
inside the dedup horizon. Identity is compared column by column (exact equality, which is what
equal sha256 digests stand for), so the hot path hashes nothing; the sha256 ``content_hash`` is
computed only for the few records that are stored individually (late events).

Horizon: a key is kept until the watermark passes the end of the last-closing window that
contains its event time (plus the correction horizon under policy ``correct``). A copy arriving
after that is late for every window anyway, so it goes to the late table instead — the windowed
output is identical and the state stays bounded. The rule depends only on arrival order, never
on batch boundaries: a copy at position i is a duplicate iff ``evict_at(t) > W_{i-1}``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from headwater.featuresets import FeatureSetSpec

CLOUDEVENT = ("ce_key",)


def identity(spec: FeatureSetSpec) -> tuple[str, ...]:
    """An event's identity columns: the envelope, every declared field (null when absent: two
    events lacking the same field are alike there) and the undeclared rest of the payload."""
    return ("entity_id", "event_time", "sequence", *(f.name for f in spec.features), "extra")


def empty_keys(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema={**schema, "evict_at": pl.Int64})


def seen_before(batch: pl.DataFrame, state: pl.DataFrame, keys: tuple[str, ...]) -> pl.Series:
    """True where the key occurred earlier: in the state, or earlier in this batch (arrival order).

    A 64-bit row hash finds the few candidate rows cheaply; candidates are then compared on the
    exact key columns, so a hash collision can never make a distinct event a duplicate.
    """
    key_cols = list(keys)
    hashes = batch.select(key_cols).hash_rows()
    candidates = _repeated(hashes)
    if state.height:
        state_hashes = state.select(key_cols).hash_rows()
        candidates = candidates | hashes.is_in(state_hashes.implode())
    index = candidates.arg_true()
    seen = pl.zeros(batch.height, dtype=pl.Boolean, eager=True).alias("seen")
    if index.len() == 0:
        return seen
    subset = batch.select(key_cols)[index]
    flags = subset.with_columns((~pl.struct(key_cols).is_first_distinct()).alias("_earlier"))
    if state.height:
        near = state.filter(state_hashes.is_in(hashes.gather(index).implode()))
        marker = near.select(key_cols).unique().with_columns(pl.lit(value=True).alias("_in_state"))
        flags = flags.join(marker, on=key_cols, how="left", maintain_order="left", nulls_equal=True)
        hit = flags["_earlier"] | flags["_in_state"].fill_null(value=False)
    else:
        hit = flags["_earlier"]
    return seen.scatter(index, hit)


def _repeated(hashes: pl.Series) -> pl.Series:
    """``hashes.is_duplicated()`` by one NumPy sort (cheaper than a hash table): the values that
    occur twice or more, then a membership test against those few."""
    ordered = np.sort(hashes.to_numpy())
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    first = np.ones(repeated.size, dtype=bool)  # sorted: each distinct value starts a run
    first[1:] = repeated[1:] != repeated[:-1]
    repeated = repeated[first]
    return hashes.is_in(pl.Series(repeated, dtype=hashes.dtype).implode())


def duplicate_mask(
    batch: pl.DataFrame, seen: pl.DataFrame, cloudevents: pl.DataFrame, keys: tuple[str, ...]
) -> pl.Series:
    """Duplicates in ``batch`` (needs ``evict_at`` and ``wm_before`` columns); ``keys`` are the
    identity columns (``identity(spec)``) that ``seen`` holds."""
    live = batch["evict_at"] > batch["wm_before"]
    dup = seen_before(batch, seen, keys)
    has_ce = batch["ce_key"].is_not_null()
    if has_ce.any():
        ce_seen = seen_before(batch.with_columns(pl.col("ce_key").fill_null("")), cloudevents, CLOUDEVENT)
        dup = dup | (ce_seen & has_ce)
    return (dup & live).rename("duplicate")


def advance(
    state: pl.DataFrame, fresh: pl.DataFrame, keys: tuple[str, ...], watermark_ms: int
) -> pl.DataFrame:
    """Add the first occurrences in ``fresh`` and evict everything whose horizon the watermark passed."""
    added = fresh.select([*keys, "evict_at"])
    if keys == CLOUDEVENT:
        added = added.filter(pl.col("ce_key").is_not_null())
    merged = pl.concat([state, added], how="vertical_relaxed") if state.height else added
    return merged.filter(pl.col("evict_at") > watermark_ms)
