"""``headwater migrate``: bring the configured metadata store's schema to this version's.

A store whose schema is versioned (PostgreSQL) says which version it was at and is at now; the
SQLite store upgrades its own files as it opens, so there is nothing to run for it. ``ingest``
migrates a new schema by itself; this command is for upgrading a shared one at a chosen time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Protocol, runtime_checkable

from headwater.cli.app import app, out
from headwater.cli.guard import run_guarded
from headwater.cli.options import HomeOpt, JsonOpt, MetadataStoreOpt, settings_from
from headwater.redaction import redact_url


@runtime_checkable
class _Migrates(Protocol):
    async def migrate(self) -> tuple[int, int]: ...


@app.command()
def migrate(home: HomeOpt = None, metadata_store: MetadataStoreOpt = None, json_out: JsonOpt = False) -> None:
    """Apply the metadata store's schema migrations (PostgreSQL) and print its version before/after."""
    from headwater.compose import make_metadata_store

    def work() -> tuple[str, tuple[int, int] | None]:
        settings = settings_from(home=home, metadata_store=metadata_store)
        store = make_metadata_store(settings)
        url = redact_url(settings.metadata_store_url)
        if not isinstance(store, _Migrates):
            return url, None
        return url, asyncio.run(store.migrate())

    url, versions = run_guarded(work)
    if json_out:
        before, after = versions if versions is not None else (None, None)
        record = {"metadata_store": url, "schema_version_before": before, "schema_version_after": after}
        sys.stdout.write(json.dumps(record) + "\n")
    elif versions is None:
        out.print(f"{url}: the schema is managed automatically (upgraded when the store opens)")
    elif versions[0] == versions[1]:
        out.print(f"{url}: schema version {versions[1]}, up to date")
    else:
        out.print(f"{url}: schema version {versions[0]} -> {versions[1]}")
