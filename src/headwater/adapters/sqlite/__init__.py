"""SQLite adapters' home: the metadata store (``sqlite:///path/state.db``), one module a job.

- ``connection``: URL, WAL connection, the store thread, a full disk told as ENOSPC (shared by
  every SQLite adapter, the feature and job stores included);
- ``base``: the metadata store's files, threads and one-statement transactions;
- ``documents``, ``dead_letters``, ``cache``: its tables, one port each;
- ``store``: ``SQLiteMetadataStore``, composed of them, with the home's settings.
"""

from __future__ import annotations

from headwater.adapters.sqlite.connection import enable_wal, full_disk, path_from_url
from headwater.adapters.sqlite.documents import RESERVE_BYTES
from headwater.adapters.sqlite.store import SQLiteMetadataStore

__all__ = ["RESERVE_BYTES", "SQLiteMetadataStore", "enable_wal", "full_disk", "path_from_url"]
