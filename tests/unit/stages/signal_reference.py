"""An independent, event-at-a-time reference for DESIGN §5, written straight from the text.

Plain Python, no Polars, no shared code with the engine beyond nothing: window starts, the
watermark and the dedup horizon are re-derived here, and statistics use ``math.fsum`` and
``statistics.stdev`` on the full value lists.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

import polars as pl

NO_WM = -(2**62)


@dataclass
class Ev:
    entity_id: str
    event_time: int
    sequence: int
    value: float
    extra: str = ""
    ce_key: str | None = None

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.entity_id, self.event_time, self.sequence, self.value, self.extra)


@dataclass
class Result:
    rows: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    late: list[tuple[str, int, int, int]] = field(default_factory=list)  # entity, t, window_ms, start
    points: dict[tuple[str, int, int, float], tuple[float, float | None]] = field(default_factory=dict)
    duplicates: int = 0
    accepted: list[Ev] = field(default_factory=list)
    accepted_at: set[int] = field(default_factory=set)
    emitted_keys: list[tuple[str, int, int]] = field(default_factory=list)
    members: dict[tuple[str, int, int], list[Ev]] = field(default_factory=dict)  # counted per window


def starts_of(t: int, size: int, slide: int) -> list[int]:
    out = []
    s = (t // slide) * slide
    while s > t - size:
        out.append(s)
        s -= slide
    return out


def stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    return {
        "count": n,
        "sum": math.fsum(values),
        "mean": math.fsum(values) / n,
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if n >= 2 else None,
    }


def run_reference(
    events: list[Ev],
    windows: list[tuple[int, int]],
    lateness: int,
    policy: str = "drop",
    horizon: int = 600_000,
    alpha: float = 0.1,
    z_ms: int = 60_000,
) -> Result:
    res = Result()
    seen: set[tuple[Any, ...]] = set()
    seen_ce: set[str] = set()
    values: dict[tuple[str, int, int], list[float]] = {}
    revision: dict[tuple[str, int, int], int] = {}
    max_t: int | None = None
    dedup_extra = horizon if policy == "correct" else 0
    for i, ev in enumerate(events):
        w_prev = NO_WM if max_t is None else max_t - lateness
        evict_at = max((ev.event_time // sl) * sl + sz for sz, sl in windows) + dedup_extra
        is_copy = ev.identity in seen or (ev.ce_key is not None and ev.ce_key in seen_ce)
        if is_copy and evict_at > w_prev:
            res.duplicates += 1
            continue
        seen.add(ev.identity)
        if ev.ce_key is not None:
            seen_ce.add(ev.ce_key)
        res.accepted.append(ev)
        res.accepted_at.add(i)
        max_t = ev.event_time if max_t is None else max(max_t, ev.event_time)
        for size, slide in windows:
            for start in starts_of(ev.event_time, size, slide):
                key = (ev.entity_id, size, start)
                end = start + size
                if end <= w_prev:  # late for this window
                    if policy == "correct" and end + horizon > w_prev:
                        values.setdefault(key, []).append(ev.value)
                        res.members.setdefault(key, []).append(ev)
                        revision[key] = revision[key] + 1 if key in revision else 0
                        res.emitted_keys.append(key)
                    else:
                        res.late.append((ev.entity_id, ev.event_time, size, start))
                else:
                    values.setdefault(key, []).append(ev.value)
                    res.members.setdefault(key, []).append(ev)
        w_now = max_t - lateness
        for key in sorted(values):
            if key not in revision and key[2] + key[1] <= w_now:
                revision[key] = 0
                res.emitted_keys.append(key)
    for key, vals in values.items():
        res.rows[key] = {**stats(vals), "revision": revision.get(key, 0)}
    res.points = _points(events_for_points(events, res, lateness), alpha, z_ms)
    return res


def events_for_points(events: list[Ev], res: Result, lateness: int) -> list[Ev]:
    """Accepted events that are not late at point level (t >= W_{i-1}), replayed in arrival order."""
    out, max_t = [], None
    for i, ev in enumerate(events):
        if i not in res.accepted_at:
            continue
        w_prev = NO_WM if max_t is None else max_t - lateness
        if ev.event_time >= w_prev:
            out.append(ev)
        max_t = ev.event_time if max_t is None else max(max_t, ev.event_time)
    return out


def _points(
    events: list[Ev], alpha: float, z_ms: int
) -> dict[tuple[str, int, int, float], tuple[float, float | None]]:
    out: dict[tuple[str, int, int, float], tuple[float, float | None]] = {}
    by_entity: dict[str, list[Ev]] = {}
    for ev in events:
        by_entity.setdefault(ev.entity_id, []).append(ev)
    for entity, evs in by_entity.items():
        evs.sort(key=lambda e: (e.event_time, e.sequence, e.value))
        ewma: float | None = None
        for ev in evs:
            ewma = ev.value if ewma is None else alpha * ev.value + (1 - alpha) * ewma
            trail = [o.value for o in evs if ev.event_time - z_ms <= o.event_time < ev.event_time]
            z = None
            if len(trail) >= 2:
                sd = statistics.stdev(trail)
                if sd > 0:
                    z = (ev.value - statistics.fmean(trail)) / sd
            out[(entity, ev.event_time, ev.sequence, ev.value)] = (ewma, z)
    return out


def generate(seed: int, n: int = 600, entities: int = 4, lateness: int = 2000) -> list[Ev]:
    """Arrivals ~ every 40 ms; 10% out of order within lateness, 3% far too late, 4% exact copies."""
    rng = random.Random(seed)
    out: list[Ev] = []
    clock = 1_700_000_000_000
    for i in range(n):
        clock += rng.randint(0, 80)
        r = rng.random()
        if r < 0.10:
            t = clock - rng.randint(0, lateness)
        elif r < 0.13:
            t = clock - rng.randint(lateness + 1000, 30_000)
        else:
            t = clock - rng.randint(0, 20)
        ent = f"e{rng.randrange(entities)}"
        value = 1000.0 + round(rng.gauss(0, 5), 3)
        out.append(Ev(ent, t, i, value))
        if out and rng.random() < 0.04:
            out.append(rng.choice(out[-20:]))
    return out


def to_frame(events: list[Ev]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "entity_id": [e.entity_id for e in events],
            "event_time": [e.event_time for e in events],
            "sequence": [e.sequence for e in events],
            "value": [e.value for e in events],
            "extra": [e.extra for e in events],
            "ce_key": [e.ce_key for e in events],
            "row": list(range(len(events))),
        },
        schema={
            "entity_id": pl.String,
            "event_time": pl.Int64,
            "sequence": pl.Int64,
            "value": pl.Float64,
            "extra": pl.String,
            "ce_key": pl.String,
            "row": pl.Int64,
        },
    )
