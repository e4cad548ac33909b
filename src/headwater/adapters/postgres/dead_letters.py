"""The dead-letter queue of an index, in its schema's ``dlq`` table (ports.DeadLetters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headwater.adapters.postgres.base import PostgresBase, utc_now
from headwater.models import DeadLetter

_LETTER_FIELDS = tuple(DeadLetter.__struct_fields__)
_COLUMNS = ", ".join(_LETTER_FIELDS)


class DeadLetterTable(PostgresBase):
    """Implements ports.DeadLetters on the ``dlq`` table."""

    async def add(self, letter: DeadLetter) -> int:
        """Stored without secrets and otherwise as it came (see the SQLite store's ``add``): the
        payload byte for byte unless it holds a secret."""
        from headwater.observability import redact  # lazily: structlog and prometheus cost ~0.1 s

        payload = None if letter.payload is None else redact(letter.payload)
        async with self.tx() as conn:
            cur = await conn.execute(
                "INSERT INTO dlq (kind, input_ref, source, stage, error_type, message, traceback, "
                "attempts, created_at, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [
                    letter.kind,
                    letter.input_ref,
                    redact(letter.source),
                    letter.stage,
                    letter.error_type,
                    redact(letter.message),
                    redact(letter.traceback),
                    letter.attempts,
                    letter.created_at or utc_now(),
                    payload,
                ],
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = await self.fetch(f"SELECT {_COLUMNS} FROM dlq {where} ORDER BY id LIMIT %s", [limit])
        return [_letter_from_row(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        rows = await self.fetch(f"SELECT {_COLUMNS} FROM dlq WHERE id = %s", [letter_id])
        return _letter_from_row(rows[0]) if rows else None

    async def mark_replayed(self, letter_ids: Sequence[int]) -> None:
        if not letter_ids:
            return
        async with self.tx() as conn:
            await conn.execute(
                "UPDATE dlq SET replayed_at = %s WHERE id = ANY(%s)", [utc_now(), sorted(set(letter_ids))]
            )


def _letter_from_row(row: Sequence[Any]) -> DeadLetter:
    values = dict(zip(_LETTER_FIELDS, row, strict=True))
    if values["payload"] is not None:
        values["payload"] = bytes(values["payload"])
    return DeadLetter(**values)
