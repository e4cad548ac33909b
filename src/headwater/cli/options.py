"""Options shared by several commands, defined once, and how a command turns them into Settings."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from headwater.cli.guard import existing_home
from headwater.config import Settings, load_settings
from headwater.errors import ConfigError

if TYPE_CHECKING:
    from headwater.featuresets import FeatureSetSpec

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="State folder \\[env HEADWATER_HOME; default ./.headwater]")
]
EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        help="hash:// | minilm:// | openai://MODEL | http://HOST/v1/embeddings?model=M&dimensions=N "
        "\\[env HEADWATER_EMBEDDER]",
    ),
]
VectorStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--vector-store",
        help="lancedb:///PATH | pgvector://USER@HOST:PORT/DB?table=T | faiss:///PATH | chroma://HOST:PORT/C "
        "\\[env HEADWATER_VECTOR_STORE; default HOME/vectors]",
    ),
]
MetadataStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--metadata-store",
        help="sqlite:///PATH | postgresql://USER@HOST:PORT/DB?schema=S "
        "\\[env HEADWATER_METADATA_STORE or METADATA_DB_URL; default HOME/state.db]",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait", help="If another process is writing the home, exit 4 at once instead of waiting"
    ),
]


def settings_from(*, rebuild: bool = False, **options: Any) -> Settings:
    return load_settings(rebuild=rebuild, **options)


def home_settings(**options: Any) -> Settings:
    """Settings of a command that reads an existing home (a missing one is a usage error)."""
    return existing_home(load_settings(**options))


# --- a feature set, from the flags of `ingest signals` and `worker signals` alike ------------------

FeatureSetOpt = Annotated[
    str | None, typer.Option("--feature-set", help="Feature set name [env HEADWATER_FEATURE_SET]")
]


class LatePolicy(StrEnum):
    drop = "drop"
    hold = "hold"
    correct = "correct"


def duration(text: str) -> str:
    """An option's duration (``2s``, ``500ms``), checked while parsing: a bad one is a usage error."""
    from headwater.featuresets import parse_duration_ms

    try:
        parse_duration_ms(text)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


def windows_list(text: str) -> str:
    """``--windows 1s,5s,1m/10s``, each checked while parsing."""
    from headwater.featuresets import parse_window

    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        msg = "no windows given: e.g. 1s,5s,1m or 1m/10s"
        raise typer.BadParameter(msg)
    try:
        for part in parts:
            parse_window(part.strip())
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


WindowsOpt = Annotated[
    str | None,
    typer.Option(
        parser=windows_list, help="Comma-separated: 1s,5s,1m or 1m/10s (sliding) [HEADWATER_WINDOWS]"
    ),
]
LatenessOpt = Annotated[str | None, typer.Option(parser=duration, help="Allowed lateness, e.g. 2s")]
LatePolicyOpt = Annotated[LatePolicy | None, typer.Option(help="What to do with late events")]
MAX_VERSION = 2**31 - 1  # a key column of every store (SQLite's integers end at 2**63 - 1)
VersionOpt = Annotated[
    int | None, typer.Option("--feature-version", min=0, max=MAX_VERSION, help="Feature set version")
]

ComputeOpt = Annotated[
    str | None,
    typer.Option(
        "--compute",
        help="Where a backfill computes: local (default) or Spark: spark, local[N], spark://HOST:PORT",
    ),
]
PointsOpt = Annotated[bool | None, typer.Option("--points/--no-points", help="EWMA and z-score per event")]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(
        "--features",
        help="Fields and aggregations: 'temp:mean,max,ewma;status:last,count_distinct'"
        " (count sum mean min max std last count_distinct ewma zscore)",
    ),
]


def feature_set_spec(
    settings: Settings,
    feature_set: str | None,
    *,
    windows: str | None,
    lateness: str | None,
    late_policy: LatePolicy | None,
    points: bool | None,
    features: str | None = None,
) -> FeatureSetSpec:
    """What a backfill and a stream worker compute from the same flags: the declaration (or the
    signal defaults) with the flags on top, so ``ingest signals`` and ``worker signals`` given the
    same options fill the same feature set. The version is the flag, else the environment's,
    else the declared one (``settings.feature_set_version`` already holds that order)."""
    from headwater.compose import resolve_feature_set

    return resolve_feature_set(
        settings,
        feature_set,
        windows=windows,
        lateness=lateness,
        policy=late_policy.value if late_policy is not None else None,
        version=settings.feature_set_version,
        points=points,
        features=features,
    )
