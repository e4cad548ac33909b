"""The dead-letter queue of a home, in ``state.db`` (ports.DeadLetters)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from headwater.adapters.sqlite.base import MetadataFiles, utc_now
from headwater.models import DeadLetter

DLQ_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlq (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, input_ref TEXT NOT NULL,
    source TEXT NOT NULL, stage TEXT NOT NULL, error_type TEXT NOT NULL, message TEXT NOT NULL,
    traceback TEXT NOT NULL, attempts INTEGER NOT NULL, created_at TEXT NOT NULL, replayed_at TEXT,
    payload BLOB
);
"""


def migrate_dlq(db: sqlite3.Connection) -> None:
    """Homes created before dead-lettered messages kept their body get the column."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(dlq)")}
    if "payload" not in columns:
        db.execute("ALTER TABLE dlq ADD COLUMN payload BLOB")


class DeadLetterTable(MetadataFiles):
    """Implements ports.DeadLetters on the ``dlq`` table."""

    async def add(self, letter: DeadLetter) -> int:
        """Stored without secrets (a dead letter is read by people and shipped to dashboards)
        and otherwise as it came: message, traceback and source keep their timestamps, numbers
        and hosts; the reference is what replay looks up (a path or a bus position); and the
        payload (the original record or message, what replay sends) stays byte for byte unless
        it holds a secret."""
        from headwater.observability import redact  # lazily: structlog and prometheus cost ~0.1 s

        message, traceback = redact(letter.message), redact(letter.traceback)
        source = redact(letter.source)
        payload = None if letter.payload is None else redact(letter.payload)

        def _add() -> int:
            with self.db:
                cur = self.db.execute(
                    "INSERT INTO dlq (kind, input_ref, source, stage, error_type, message, traceback, "
                    "attempts, created_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        letter.kind,
                        letter.input_ref,
                        source,
                        letter.stage,
                        letter.error_type,
                        message,
                        traceback,
                        letter.attempts,
                        letter.created_at or utc_now(),
                        payload,
                    ),
                )
                return int(cur.lastrowid or 0)

        return await self._thread.call(_add)

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = await self._thread.call(
            lambda: self.db.execute(f"SELECT * FROM dlq {where} ORDER BY id LIMIT ?", (limit,)).fetchall()
        )
        return [_letter_from_row(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        row = await self._thread.call(
            lambda: self.db.execute("SELECT * FROM dlq WHERE id = ?", (letter_id,)).fetchone()
        )
        return None if row is None else _letter_from_row(row)

    async def mark_replayed(self, letter_ids: Sequence[int]) -> None:
        await self._thread.call(
            self._tx, "UPDATE dlq SET replayed_at = ? WHERE id = ?", [(utc_now(), i) for i in letter_ids]
        )


_LETTER_FIELDS = tuple(DeadLetter.__struct_fields__)
"""The ``dlq`` table's column order is the record's field order."""


def _letter_from_row(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(**dict(zip(_LETTER_FIELDS, row, strict=True)))
