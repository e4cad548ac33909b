"""What a home remembers about how its index was built, so every later command builds it the same.

A query embedded with another model than the index's returns meaningless hits; a re-run without
``--pii-scrub`` re-embeds everything and puts the e-mail addresses back. So the first ingest
records the settings that shape the index (``HOME/index.json``, written atomically), and
``load_settings`` applies them to every later command of that home: a value nobody asked for
comes from the home; a different value asked for explicitly (flag, environment, headwater.toml)
is refused with one line, unless it is a re-index the caller asked for (``--rebuild``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from headwater.config import Settings, generation_name
from headwater.errors import ConfigError
from headwater.redaction import redact_url

FILE = "index.json"
# The settings that shape the index: changing one changes chunks or vectors.
INDEX_FIELDS = ("embedder", "chunk_size_chars", "chunk_overlap_chars", "pii_scrub", "include", "exclude")
# Of those, the ones a re-index in place can change: chunks are replaced document by document and
# every document stays searchable meanwhile. Vectors of another embedder cannot share the table:
# a --rebuild with another embedder builds the home's next index generation beside the current
# one, which queries keep using until the new one is complete (see ``switches``).
REBUILDABLE = frozenset(INDEX_FIELDS) - {"embedder"}
_OPTION = {
    "chunk_size_chars": "--chunk-size",
    "chunk_overlap_chars": "--chunk-overlap",
    "pii_scrub": "--pii-scrub",
}


def recorded(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((home / FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        msg = f"{home / FILE} cannot be read ({exc}): restore it, or re-index into a new --home"
        raise ConfigError(msg) from exc
    return data if isinstance(data, dict) else None


def switches(settings: Settings) -> bool:
    """Whether these settings build a next index generation (an embedder --rebuild): its run
    records them only once it is complete, which is the atomic switch of every later command."""
    memory = recorded(settings.home)
    return memory is not None and settings.index_generation > int(memory.get("generation", 0))


def record(settings: Settings, embedder_id: str, dimensions: int) -> None:
    """Called by a document run once its embedder is open: the first run writes what it built
    with, a ``--rebuild`` rewrites it (an embedder rebuild, at its end: ``switches``). The
    embedder URL is kept without its credentials. Written atomically (rename)."""
    values = {field: _comparable(field, getattr(settings, field)) for field in INDEX_FIELDS}
    data = {**values, "embedder_id": embedder_id, "dimensions": dimensions}
    if settings.index_generation:
        data["generation"] = settings.index_generation
    if recorded(settings.home) == data:
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=settings.home, prefix=".index-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(settings.home / FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)


def retire(home: Path, generation: int) -> None:
    """Delete an index generation two switches old: the one just replaced stays for readers that
    opened it before the switch (a running server), until the next switch."""
    if generation < 0:
        return
    shutil.rmtree(home / generation_name("vectors", generation), ignore_errors=True)
    for suffix in ("", "-wal", "-shm", ".reserve"):
        (home / f"{generation_name('state', generation)}.db{suffix}").unlink(missing_ok=True)


def reconcile(settings: Settings, *, rebuild: bool = False, index: bool = True) -> Settings:
    """The settings a command on this home must use: the recorded ones where nothing else was
    asked for explicitly; a conflicting explicit value is a ConfigError (or, with ``rebuild``,
    the new value for the fields a re-index in place can change). A command that does not touch
    the index (``index=False``: the DLQ, jobs, features) takes the home's values and ignores a
    conflicting one it would never use (a HEADWATER_EMBEDDER exported for another home)."""
    memory = recorded(settings.home)
    if memory is None:
        return settings
    update: dict[str, Any] = {"index_generation": int(memory.get("generation", 0))}
    for field in INDEX_FIELDS:
        if field not in memory:
            continue
        asked = _comparable(field, getattr(settings, field))
        if field not in settings.model_fields_set or asked == memory[field]:
            if asked != memory[field]:
                update[field] = memory[field]
            continue
        if not index:
            update[field] = memory[field]
            continue
        if rebuild and field in REBUILDABLE:
            continue
        if field == "embedder" and _embedder_id(str(asked)) == memory.get("embedder_id"):
            continue  # the same embedder with other operational options (timeout, batch, delay)
        if field == "embedder" and rebuild:
            if settings.vector_store or settings.metadata_store:
                msg = (
                    f"--rebuild with another embedder builds a new index beside the current one in "
                    f"the home {settings.home}, and this one has external stores "
                    "(--vector-store / HEADWATER_METADATA_STORE): index into new stores instead"
                )
                raise ConfigError(msg)
            update["index_generation"] += 1  # built beside the current index, then switched to
            continue
        raise ConfigError(_conflict(settings, field, memory[field], asked, rebuild=rebuild))
    return settings.model_copy(update=update)


def _embedder_id(url: str) -> str:
    from headwater import registry  # lazily: the registry imports adapters, which import config

    return str(registry.resolve("embedder", url)(url).id)


def _comparable(field: str, value: Any) -> Any:
    if field == "embedder":
        return redact_url(str(value))
    if isinstance(value, tuple):
        return list(value)
    return value


def _conflict(settings: Settings, field: str, was: Any, asked: Any, *, rebuild: bool) -> str:
    option = _OPTION.get(field, f"--{field}")
    head = (
        f"the home {settings.home} was built with {field} = {was!r}, and {asked!r} was asked for "
        f"({option} or HEADWATER_{field.upper()}): "
    )
    if field == "embedder":
        return head + (
            "vectors of two embedders cannot share an index: index into a new --home, or add "
            "--rebuild to build a new index in this home (queries use the current one until it is complete)"
        )
    how = "drop that setting to use the home's, index into a new --home, or add --rebuild to re-index it"
    return head + how
