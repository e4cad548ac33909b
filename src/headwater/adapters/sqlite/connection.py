"""What every SQLite adapter shares: the URL, the connection (WAL, retried while another
process switches a fresh file to it), the store's own thread, and a full disk told as such."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError, disk_full

# Result codes SQLite gives a write that found no space: SQLITE_FULL ("database or disk is
# full"), and the I/O errors of a write, an fsync, a truncate or the growth of the WAL index,
# which are only a full disk when the disk is indeed (nearly) full.
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_NEARLY_FULL_BYTES = 1 << 20


def path_from_url(url: str, what: str, example: str) -> Path:
    """The file of a ``sqlite:///path`` URL; ``what`` and ``example`` word the error."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path:
        msg = f"{what} URL {url!r} must look like {example}"
        raise ConfigError(msg)
    return Path(parts.path)


def enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switching a new database to WAL takes an exclusive lock and answers "locked" at once
    (no busy wait) when two processes open the same fresh home together: retry briefly."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
        else:
            return


def full_disk(exc: BaseException, path: Path) -> OSError | None:
    """A SQLite error that means "no space left on device", as the OSError a write of ``path``
    would have raised (ENOSPC, naming the file), or None. SQLite says it without a file name
    ("database or disk is full", or a "disk I/O error" when the WAL or its index cannot grow):
    the one line that ends the run names the store instead (``errors.disk_full``)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # unset on errors raised by hand
    said_full = disk_full(exc) is not None or code == _SQLITE_FULL
    if not said_full and (code != _SQLITE_IOERR or _free_bytes(path) > _NEARLY_FULL_BYTES):
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.realpath(path))


def _free_bytes(path: Path) -> int:
    try:
        found = os.statvfs(path.parent)
    except OSError:
        return _NEARLY_FULL_BYTES + 1
    return found.f_bavail * found.f_frsize


def store_thread(name: str, path: Path) -> OwnThread:
    """The store's own thread; a full disk comes out of it as an OSError naming the file."""
    return OwnThread(name, lambda exc: full_disk(exc, path))


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode with ``synchronous`` (FULL: a commit survives a power cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    enable_wal(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
