"""Online feature store on SQLite (WAL, ``synchronous=FULL``): rows, points, invalid records, checkpoints.

Everything a signal batch changes is written in ONE transaction, checkpoint included, so the
store is always at a batch boundary: after ``kill -9`` the run resumes from the last committed
batch and replays the rest idempotently (upserts keyed by the FeatureRow key; invalid records keyed by
(scope, batch, index)).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from typing import Any

from headwater.adapters.sqlite.connection import connect, full_disk, path_from_url
from headwater.errors import PermanentError, RetryableError
from headwater.models import BatchCommit, SignalCheckpoint, signal_checkpoint
from headwater.stages.features import FEATURE_ROW_KEY, ONLINE_ROW_COLUMNS

POINT_FIELDS = ("entity_id", "feature_set", "version", "event_time_ms", "sequence", "features")
INVALID_FIELDS = ("scope", "batch", "idx", "input_ref", "field", "reason")

# A window row's key has one home (stages/features.py, FEATURE_ROW_KEY); its features are the
# declared ``{field}_{aggregation}`` columns, which differ per feature set: one JSON object.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_rows (
  entity_id TEXT NOT NULL, feature_set TEXT NOT NULL, version INTEGER NOT NULL,
  window_ms INTEGER NOT NULL, window_start_ms INTEGER NOT NULL, revision INTEGER NOT NULL,
  features TEXT NOT NULL,
  PRIMARY KEY (entity_id, feature_set, version, window_ms, window_start_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS point_features (
  entity_id TEXT NOT NULL, feature_set TEXT NOT NULL, version INTEGER NOT NULL,
  event_time_ms INTEGER NOT NULL, sequence INTEGER NOT NULL, features TEXT NOT NULL,
  PRIMARY KEY (entity_id, feature_set, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invalid_records (
  scope TEXT NOT NULL, batch INTEGER NOT NULL, idx INTEGER NOT NULL, input_ref TEXT, field TEXT, reason TEXT,
  dlq_id INTEGER, PRIMARY KEY (scope, batch, idx));
CREATE TABLE IF NOT EXISTS signal_checkpoints (
  scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, next_batch INTEGER NOT NULL, file_index INTEGER NOT NULL,
  row_offset INTEGER NOT NULL, counters TEXT NOT NULL, state BLOB NOT NULL, status TEXT NOT NULL);
"""


def _placeholders(fields: tuple[str, ...]) -> str:
    return ", ".join("?" for _ in fields)


_UPSERT_ROW = (
    f"INSERT INTO feature_rows ({', '.join(ONLINE_ROW_COLUMNS)})"
    f" VALUES ({_placeholders(ONLINE_ROW_COLUMNS)}) ON CONFLICT DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in ONLINE_ROW_COLUMNS[len(FEATURE_ROW_KEY) :])
    # A row never goes back to an older revision: a re-run of a backfill recomputes revision 0
    # of windows a correction or a release already revised (the offline store keeps both and
    # readers take the highest; the online store keeps only the highest).
    + " WHERE excluded.revision >= feature_rows.revision"
)
# A point's features are patched, not replaced: an event without ``humidity`` leaves the
# entity's last humidity EWMA in place (the patch holds only the fields the event carried).
_UPSERT_POINT = (
    f"INSERT INTO point_features ({', '.join(POINT_FIELDS)}) VALUES ({_placeholders(POINT_FIELDS)}) "
    "ON CONFLICT DO UPDATE SET event_time_ms = excluded.event_time_ms, sequence = excluded.sequence,"
    " features = json_patch(point_features.features, excluded.features)"
)
_UPSERT_INVALID = (
    f"INSERT INTO invalid_records ({', '.join(INVALID_FIELDS)}) VALUES ({_placeholders(INVALID_FIELDS)}) "
    "ON CONFLICT DO UPDATE SET input_ref = excluded.input_ref, field = excluded.field,"
    " reason = excluded.reason,"
    # A recommitted batch (resume) rewrites the same records: their letters stand. A changed
    # input re-run under the same scope may put another record at this key: it needs its own.
    " dlq_id = CASE WHEN input_ref IS excluded.input_ref AND field IS excluded.field"
    " AND reason IS excluded.reason THEN dlq_id END"
)
_SAVE_CHECKPOINT = (
    "INSERT OR REPLACE INTO signal_checkpoints (scope, fingerprint, next_batch, file_index, row_offset,"
    " counters,"
    " state, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_LATEST = """
SELECT * FROM feature_rows f WHERE entity_id = ? AND feature_set = ? AND version = ?
  AND window_start_ms = (SELECT MAX(window_start_ms) FROM feature_rows g WHERE g.entity_id = f.entity_id
    AND g.feature_set = f.feature_set AND g.version = f.version AND g.window_ms = f.window_ms)
ORDER BY window_ms
"""


class SQLiteFeatureStore:
    """Implements ``ports.FeatureStore`` (FeatureRows, SignalCheckpoints, InvalidRecordOutbox);
    one connection, used from a worker thread under a lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url, "online store", "sqlite:///path/features.db")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path, "FULL")
            conn.executescript(_SCHEMA)
            _refuse_old_schema(conn, self.path)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if (full := full_disk(exc, self.path)) is not None:
                raise full from exc
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    def _run(self, fn: Any, *args: Any) -> Any:
        if self._conn is None:
            msg = f"online store {self.url} is not open"
            raise PermanentError(msg)
        with self._lock:
            try:
                return fn(self._conn, *args)
            except sqlite3.DatabaseError as exc:
                if (full := full_disk(exc, self.path)) is not None:
                    raise full from exc  # neither retried nor a bad batch: the run stops (exit 6)
                msg = f"online store {self.path}: {exc}"
                if isinstance(exc, sqlite3.OperationalError):
                    raise RetryableError(msg) from exc
                raise PermanentError(msg) from exc

    async def commit(self, batch: BatchCommit) -> None:
        await asyncio.to_thread(self._run, _commit, batch)

    async def load_checkpoint(self, scope: str) -> SignalCheckpoint | None:
        result: SignalCheckpoint | None = await asyncio.to_thread(self._run, _load_checkpoint, scope)
        return result

    async def get_latest(
        self, entity_id: str, feature_set: str, version: int | None = None
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await asyncio.to_thread(
            self._run, _latest, entity_id, feature_set, version
        )
        return rows

    async def undelivered_invalid(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await asyncio.to_thread(self._run, _select_undelivered)
        return rows

    async def mark_delivered(self, keys: list[tuple[str, int, int, int]]) -> None:
        await asyncio.to_thread(self._run, _mark_delivered, keys)

    async def dump_rows(self) -> list[tuple[Any, ...]]:
        """Every online row, sorted (verification and tests)."""
        rows: list[tuple[Any, ...]] = await asyncio.to_thread(
            self._run, lambda c: c.execute("SELECT * FROM feature_rows ORDER BY 1, 2, 3, 4, 5").fetchall()
        )
        return rows


def _refuse_old_schema(conn: sqlite3.Connection, path: object) -> None:
    """Stores written before features became per-field columns have one column per aggregation:
    refused with what to do, not misread."""
    for table in ("feature_rows", "point_features"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "features" not in columns:
            msg = (
                f"online store {path}: table {table} has the layout of an older headwater (one column "
                "per aggregation); move the file aside and re-run the backfill to rebuild it"
            )
            raise PermanentError(msg)


def _commit(conn: sqlite3.Connection, batch: BatchCommit) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_UPSERT_ROW, batch.online_rows)
        conn.executemany(_UPSERT_POINT, batch.online_points)
        conn.executemany(_UPSERT_INVALID, batch.invalid_rows)
        cp = batch.checkpoint
        if cp is not None:
            conn.execute(
                _SAVE_CHECKPOINT,
                (
                    cp.scope,
                    cp.fingerprint,
                    cp.next_batch,
                    cp.file_index,
                    cp.row_offset,
                    json.dumps(cp.counters, sort_keys=True),
                    cp.state,
                    cp.status,
                ),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back on its own after some errors (a full disk)
            conn.execute("ROLLBACK")
        raise


def _load_checkpoint(conn: sqlite3.Connection, scope: str) -> SignalCheckpoint | None:
    row = conn.execute(
        "SELECT scope, fingerprint, next_batch, file_index, row_offset, counters, state, status"
        " FROM signal_checkpoints WHERE scope = ?",
        (scope,),
    ).fetchone()
    if row is None:
        return None
    return signal_checkpoint(
        row[0],
        row[1],
        next_batch=row[2],
        position=(row[3], row[4]),
        counters=json.loads(row[5]),
        state=bytes(row[6]),
        status=row[7],
    )


def _latest(
    conn: sqlite3.Connection, entity_id: str, feature_set: str, version: int | None
) -> list[dict[str, Any]]:
    if version is None:
        found = conn.execute(
            "SELECT MAX(version) FROM feature_rows WHERE entity_id = ? AND feature_set = ?",
            (entity_id, feature_set),
        ).fetchone()
        version = found[0] if found else None
        if version is None:
            return []
    rows = _named(conn.execute(_LATEST, (entity_id, feature_set, version)))
    point = conn.execute(
        "SELECT * FROM point_features WHERE entity_id = ? AND feature_set = ? AND version = ?",
        (entity_id, feature_set, version),
    )
    rows.extend({"kind": "point", **r} for r in _named(point))
    return rows


def _named(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows as dicts, the ``features`` JSON spread into the row (``temp_mean``, ``temp_ewma``)."""
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        features = json.loads(row.pop("features"))
        out.append({**row, **features})
    return out


def _select_undelivered(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = conn.execute("SELECT * FROM invalid_records WHERE dlq_id IS NULL ORDER BY scope, batch, idx")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _mark_delivered(conn: sqlite3.Connection, keys: list[tuple[str, int, int, int]]) -> None:
    with conn:
        conn.executemany(
            "UPDATE invalid_records SET dlq_id = ? WHERE scope = ? AND batch = ? AND idx = ?",
            [(dlq_id, scope, batch, idx) for scope, batch, idx, dlq_id in keys],
        )
