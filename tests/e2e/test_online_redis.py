"""The online store on Redis end to end: ``HEADWATER_ONLINE_STORE=redis://…`` makes ``ingest
signals`` write, and ``features get`` read, the same rows as a home's default SQLite store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ROOT, Cli
from tests.servers import ServerProcess

SIGNALS = ROOT / "samples" / "signals"
FEATURES = (
    "--feature-set",
    "sensors",
    "--features",
    "value:mean,max,std,ewma;rpm:mean,max;status:last,count_distinct",
)


def test_features_get_from_redis_equals_sqlite(
    cli: Cli, redis_server: ServerProcess, unique: str, tmp_path: Path
) -> None:
    redis = {"HEADWATER_ONLINE_STORE": f"{redis_server.url}?prefix=e{unique}"}
    homes = {"sqlite": (tmp_path / "sqlite", {}), "redis": (tmp_path / "redis", redis)}
    for home, env in homes.values():
        cli("ingest", "signals", str(SIGNALS), "--home", str(home), *FEATURES, env=env)
    entities = sorted(set(re.findall(r'"entity_id":"([^"]+)"', (SIGNALS / "events.jsonl").read_text())))
    assert entities == ["fan-7", "pump-1", "pump-2"]
    for entity in entities:
        got = {
            name: json.loads(cli("features", "get", entity, "--home", str(home), "--feature-set", "sensors",
                                 "--json", env=env).stdout)
            for name, (home, env) in homes.items()
        }  # fmt: skip
        assert got["redis"] == got["sqlite"] != [], entity
        assert [r.get("kind") for r in got["redis"]][-1] == "point"
    assert not (tmp_path / "redis" / "features.db").exists()  # the rows came from Redis
