"""One LangChain ``index()`` run over a corpus folder, as its own process (the `--compare langchain` side).

Why this set-up: it is the reference the field uses today and the one our peers study measured
(research/peers-docs.md §2): ``SQLRecordManager`` on SQLite, ``InMemoryVectorStore`` persisted to
JSON between runs (like a cron job would), ``RecursiveCharacterTextSplitter(1000, 100,
add_start_index=True)``, ``cleanup="incremental"``, ``source_id_key="source"``, batch size 100, and
the *same* hash embedding as headwater's ``hash://`` (copied, not imported, so headwater's import time
is not charged to LangChain). Files are read every run: LangChain has no way to skip unchanged files
before loading them.

Prints one JSON object on stdout: the IndexingResult counts, texts embedded and phase timings.
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
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: E402

SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".pdf"}


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


class HashEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` giving headwater's hash vectors; counts what it was asked to embed."""

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0
        self.seconds = 0.0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        self.calls += 1
        self.texts += len(texts)
        vectors = embed_hash(texts).tolist()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("state", type=Path, help="folder for records.sqlite and store.json")
    parser.add_argument("--deleted", type=Path, help="file listing deleted sources, to count leftovers")
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {"import_s": time.perf_counter() - T0}

    start = time.perf_counter()
    embeddings = HashEmbeddings()
    store_path = args.state / "store.json"
    store = (
        InMemoryVectorStore.load(str(store_path), embeddings)
        if store_path.exists()
        else InMemoryVectorStore(embeddings)
    )
    records = SQLRecordManager("bench", db_url=f"sqlite:///{args.state / 'records.sqlite'}")
    records.create_schema()
    phases["open_state_s"] = time.perf_counter() - start

    start = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100, add_start_index=True)
    stats: dict[str, float] = {"load_split_s": 0.0, "files": 0}
    result = index(
        load_chunks(args.corpus, splitter, stats),
        records,
        store,
        cleanup="incremental",
        source_id_key="source",
        batch_size=100,
    )
    phases["index_s"] = time.perf_counter() - start
    phases["load_split_s"] = stats["load_split_s"]
    phases["embed_s"] = embeddings.seconds

    start = time.perf_counter()
    store.dump(str(store_path))
    phases["persist_s"] = time.perf_counter() - start

    out: dict[str, Any] = {
        **result,
        "documents_seen": int(stats["files"]),
        "chunks_embedded": embeddings.texts,
        "embed_calls": embeddings.calls,
        "vectors": len(store.store),
        "phases": phases,
    }
    if args.deleted:
        gone = set(args.deleted.read_text().split("\n")) - {""}
        out["stale_of_deleted"] = sum(1 for row in store.store.values() if row["metadata"]["source"] in gone)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
