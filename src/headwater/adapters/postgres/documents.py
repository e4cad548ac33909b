"""Document state: documents, their chunk keys and the scan's seen set (ports.DocumentReader,
DocumentLedger and ScanLog).

Every write is one transaction, its rows sent as arrays (``unnest``): one round trip a call,
whatever the batch. Rows are written in doc_id order, so two workers that claim or commit
overlapping batches lock them in the same order and wait for each other instead of deadlocking;
a claim's attempt is counted by the row's own ``INSERT … ON CONFLICT DO UPDATE``, which the
database serializes per document: two claims at once count two attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from headwater.adapters.postgres.base import PostgresBase
from headwater.adapters.postgres.connection import connect, errors
from headwater.models import ChunkKey, DocState, Version, doc_state_from_row, doc_state_row

_DOC_COLUMNS = "doc_id, source, uri, content_hash, size, mtime_ns, status, attempts, error_count, version"
_DOC_TYPES = "text[], text[], text[], text[], bigint[], bigint[], text[], int[], int[], bigint[]"
_UPDATE_ALL = ", ".join(f"{c} = excluded.{c}" for c in (*_DOC_COLUMNS.split(", ")[1:], "updated_at"))
_PAGE = 5000


class DocumentTables(PostgresBase):
    """Implements ports.DocumentReader, DocumentLedger and ScanLog on ``documents``, ``chunks``
    and a temporary ``seen`` table on a connection of its own."""

    async def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        rows = await self.fetch(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE doc_id = ANY(%s)", [list(doc_ids)]
        )
        return {row[0]: doc_state_from_row(row) for row in rows}

    async def versions(self, source: str, uris: Sequence[str]) -> dict[str, Version]:
        rows = await self.fetch(
            "SELECT uri, size, mtime_ns, status, doc_id FROM documents WHERE source = %s AND uri = ANY(%s)",
            [source, list(uris)],
        )
        return {uri: Version(size, mtime_ns, status, doc_id) for uri, size, mtime_ns, status, doc_id in rows}

    async def get_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkKey]]:
        rows = await self.fetch(
            "SELECT doc_id, chunk_id, chunk_hash FROM chunks WHERE doc_id = ANY(%s) "
            "ORDER BY doc_id, chunk_id",
            [list(doc_ids)],
        )
        found: dict[str, list[ChunkKey]] = {}
        for doc_id, chunk_id, chunk_hash in rows:
            found.setdefault(doc_id, []).append(
                ChunkKey(doc_id=doc_id, chunk_id=chunk_id, chunk_hash=chunk_hash)
            )
        return found

    async def claim(self, docs: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        """An attempt needs only survive this process (see ``tx``); a document listed twice in
        one batch counts two attempts, as two claims would."""
        counted: dict[str, tuple[str, str, int]] = {}
        for doc_id, source, uri in docs:
            counted[doc_id] = (source, uri, counted.get(doc_id, ("", "", 0))[2] + 1)
        if not counted:
            return {}
        ids = sorted(counted)
        columns = [ids, *([counted[d][i] for d in ids] for i in range(3))]
        async with self.tx(durable=False) as conn:
            cur = await conn.execute(
                "INSERT INTO documents AS d (doc_id, source, uri, status, attempts) "
                "SELECT id, src, u, 'pending', n FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[]) "
                "AS t(id, src, u, n) ORDER BY id "
                "ON CONFLICT (doc_id) DO UPDATE SET status = 'pending', "
                "attempts = d.attempts + excluded.attempts, source = excluded.source, uri = excluded.uri, "
                "updated_at = now() RETURNING doc_id, attempts",
                columns,
            )
            return {doc_id: attempts for doc_id, attempts in await cur.fetchall()}

    async def release(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        async with self.tx() as conn:
            await conn.execute(
                "UPDATE documents SET attempts = greatest(attempts - 1, 0) "
                "WHERE status = 'pending' AND doc_id = ANY(%s)",
                [sorted(set(doc_ids))],
            )

    async def commit(self, docs: Sequence[DocState], chunks: dict[str, Sequence[ChunkKey]]) -> None:
        latest = {d.doc_id: d for d in docs}  # the last row of a document wins, as in a replace
        rows = [doc_state_row(latest[doc_id]) for doc_id in sorted(latest)]
        keys = {(k.doc_id, k.chunk_id): k.chunk_hash for ks in chunks.values() for k in ks}
        async with self.tx() as conn:
            if rows:
                await conn.execute(
                    f"INSERT INTO documents AS d ({_DOC_COLUMNS}, updated_at) SELECT *, now() "
                    f"FROM unnest({', '.join(f'%s::{t}' for t in _DOC_TYPES.split(', '))}) ORDER BY 1 "
                    f"ON CONFLICT (doc_id) DO UPDATE SET {_UPDATE_ALL}",
                    [list(column) for column in zip(*rows, strict=True)],
                )
            if chunks:
                await conn.execute("DELETE FROM chunks WHERE doc_id = ANY(%s)", [sorted(chunks)])
            if keys:
                ordered = sorted(keys)
                await conn.execute(
                    "INSERT INTO chunks (doc_id, chunk_id, chunk_hash) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
                    "ON CONFLICT (doc_id, chunk_id) DO UPDATE SET chunk_hash = excluded.chunk_hash",
                    [[d for d, _ in ordered], [c for _, c in ordered], [keys[k] for k in ordered]],
                )

    async def touch(self, docs: Sequence[DocState]) -> None:
        """Need not be durable (see ``ScanLog.touch``): a lost one costs a re-read."""
        if not docs:
            return
        latest = {d.doc_id: d for d in docs}
        ids = sorted(latest)
        async with self.tx(durable=False) as conn:
            await conn.execute(
                "UPDATE documents SET size = t.size, mtime_ns = t.mtime_ns, updated_at = now() "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS t(doc_id, size, mtime_ns) "
                "WHERE documents.doc_id = t.doc_id",
                [ids, [latest[d].size for d in ids], [latest[d].mtime_ns for d in ids]],
            )

    async def finish(self, doc_ids: Sequence[str], status: str = "done") -> None:
        if not doc_ids:
            return
        async with self.tx() as conn:
            await conn.execute(
                "UPDATE documents SET status = %s, updated_at = now(), "
                "attempts = CASE WHEN %s = 'done' THEN 0 ELSE attempts END WHERE doc_id = ANY(%s)",
                [status, status, sorted(set(doc_ids))],
            )

    async def forget(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        ids = sorted(set(doc_ids))
        async with self.tx() as conn:
            await conn.execute("DELETE FROM chunks WHERE doc_id = ANY(%s)", [ids])
            await conn.execute("DELETE FROM documents WHERE doc_id = ANY(%s)", [ids])

    async def documents_with_status(self, statuses: Sequence[str]) -> list[DocState]:
        rows = await self.fetch(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE status = ANY(%s)", [list(statuses)]
        )
        return [doc_state_from_row(r) for r in rows]

    async def note_seen(self, uris: Sequence[str]) -> None:
        """Into a temporary table of a connection of its own, made at the first call and never
        replaced: if that connection is lost, so is the seen set, and ``unseen`` fails (a
        StoreUnavailable) instead of taking every document for deleted."""
        if self._scan_made is None:
            self._scan_made = asyncio.Lock()
        async with errors(self.url):
            async with self._scan_made:  # the scan's batches come concurrently: one connection for all
                if self._scan is None:
                    scan = await connect(self.url, self.conninfo)
                    try:
                        await self.configure(scan)
                        await scan.execute('CREATE TEMP TABLE seen (uri text COLLATE "C" PRIMARY KEY)')
                    except BaseException:
                        await scan.close()
                        raise
                    self._scan = scan
            await self._scan.execute(
                "INSERT INTO seen SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", [list(uris)]
            )

    async def unseen(self, source: str, limit: int) -> list[DocState]:
        if self._scan is None:  # nothing listed: every document of the source is unseen
            rows = await self.fetch(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE source = %s ORDER BY uri LIMIT %s",
                [source, limit],
            )
            return [doc_state_from_row(r) for r in rows]
        async with errors(self.url):
            cur = await self._scan.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents d WHERE source = %s "
                "AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.uri = d.uri) ORDER BY uri LIMIT %s",
                [source, limit],
            )
            return [doc_state_from_row(r) for r in await cur.fetchall()]

    async def chunk_keys(self) -> AsyncIterator[ChunkKey]:
        after = ("", "")
        while True:
            rows = await self.fetch(
                "SELECT doc_id, chunk_id, chunk_hash FROM chunks WHERE (doc_id, chunk_id) > (%s, %s) "
                "ORDER BY doc_id, chunk_id LIMIT %s",
                [*after, _PAGE],
            )
            if not rows:
                return
            for doc_id, chunk_id, chunk_hash in rows:
                yield ChunkKey(doc_id=doc_id, chunk_id=chunk_id, chunk_hash=chunk_hash)
            after = (rows[-1][0], rows[-1][1])

    async def counts(self) -> dict[str, int]:
        (documents, chunks, dlq), *_ = await self.fetch(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
            "(SELECT count(*) FROM dlq WHERE replayed_at IS NULL)"
        )
        result = {"documents": int(documents), "chunks": int(chunks), "dlq": int(dlq)}
        for status, n in await self.fetch("SELECT status, count(*) FROM documents GROUP BY status"):
            result[f"documents_{status}"] = int(n)
        return result
