"""Deterministic synthetic corpora for the document benchmark, and the 1 % edits W3/W4 apply.

Why synthetic: the benchmark must scale to 100k documents and give the same bytes on every
machine, so numbers are comparable between runs and between headwater and LangChain. Documents are
built from a seeded pool of varied sentences, so no two 1000-character chunks are equal (an
embedding cache keyed by chunk text cannot cheat), and sized 2-8 KB like real notes.

The corpus is generated once per (size, seed, pdf share) and then mutated *in place* by W3/W4;
``restore`` puts the original bytes back. A manifest beside the folder says whether the corpus is
pristine, so an interrupted benchmark regenerates instead of measuring a half-edited corpus.

``copy_folders`` makes a corpus of real documents instead (``--corpus DIR``): the text files of one
or more folders, copied under the work folder so W3/W4 edit the copy and never the originals.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

WORDS = (  # noqa: SIM905 -- a word list reads better as prose
    "ingest index vector chunk embed store query retry backoff queue stream batch commit replay "
    "document folder source manifest checkpoint worker process thread latency throughput memory "
    "disk cache hash offset overlap window schema version metadata record table column row "
    "signal event entity watermark lateness tumbling session merge delete upsert compact "
    "river delta basin spring valley meadow glacier harbor lantern copper granite willow "
    "orchard falcon meridian quartz saffron tundra estuary canyon prairie lagoon summit "
    "the a of to in and for with on by from as at into over under between through after before "
    "quickly slowly carefully rarely often never always safely exactly roughly nearly "
    "fast slow large small stale fresh durable atomic idempotent bounded lazy eager "
    "runs keeps writes reads skips reports retries checks measures builds splits stores returns"
).split()

SUFFIXES = (".md", ".md", ".md", ".txt")
DOCS_PER_FOLDER = 50
# What both sides index (headwater's default include patterns; the LangChain worker's SUFFIXES).
INDEXED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".pdf"})


@dataclass(frozen=True)
class CorpusSpec:
    """What identifies a corpus: same spec, same bytes."""

    size: int
    seed: int = 42
    pdf_share: float = 0.0
    min_bytes: int = 2000
    max_bytes: int = 8000
    label: str = ""  # set for a copied folder of real documents: its name

    @property
    def name(self) -> str:
        if self.label:
            return f"corpus-{self.label}"
        pdf = f"-pdf{round(self.pdf_share * 100)}" if self.pdf_share else ""
        return f"corpus-{self.size}-s{self.seed}{pdf}"


@dataclass
class Corpus:
    """A generated corpus on disk: its root folder and relative file paths (sorted)."""

    spec: CorpusSpec
    root: Path
    files: list[str] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.root.with_suffix(".json")

    @property
    def backup(self) -> Path:
        return self.root.with_name(self.root.name + ".orig")

    def text_files(self) -> list[str]:
        return [f for f in self.files if not f.endswith(".pdf")]


class SentencePool:
    """A seeded pool of varied sentences; documents are random walks through it (fast at 100k docs)."""

    def __init__(self, rng: random.Random, count: int = 40_000) -> None:
        self.sentences = [self._sentence(rng, i) for i in range(count)]

    @staticmethod
    def _sentence(rng: random.Random, i: int) -> str:
        words = rng.choices(WORDS, k=rng.randint(6, 22))
        words.insert(rng.randrange(len(words)), f"item{i}")  # a rare token keeps sentences distinct
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def paragraph(self, rng: random.Random) -> str:
        return " ".join(rng.choices(self.sentences, k=rng.randint(2, 7)))


def make_markdown(rng: random.Random, pool: SentencePool, target: int, title: str) -> str:
    """A markdown-ish document of about ``target`` characters: headings, paragraphs, lists."""
    parts = [f"# {title}\n"]
    size = len(parts[0])
    while size < target:
        roll = rng.random()
        if roll < 0.12:
            block = f"## {pool.paragraph(rng)[:60].rstrip(' .?!')}\n"
        elif roll < 0.22:
            block = "\n".join(f"- {rng.choice(pool.sentences)}" for _ in range(rng.randint(2, 5))) + "\n"
        else:
            block = pool.paragraph(rng) + "\n"
        parts.append(block)
        size += len(block) + 1
    return "\n".join(parts)


def make_pdf(path: Path, rng: random.Random, pool: SentencePool, target: int, title: str) -> None:
    """A small text PDF (1-3 pages) through reportlab, imported lazily (only with --pdf-share)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    story = [Paragraph(title, styles["Title"])]
    size = 0
    while size < target:
        para = pool.paragraph(rng)
        story.append(Paragraph(para, styles["BodyText"]))
        size += len(para)
    SimpleDocTemplate(str(path), pagesize=A4, invariant=1).build(story)


def generate(spec: CorpusSpec, base: Path) -> Corpus:
    """Build the corpus under ``base`` unless a pristine copy with the same spec is already there."""
    corpus = Corpus(spec, base / spec.name)
    if corpus.manifest.exists():
        meta = json.loads(corpus.manifest.read_text())
        if meta.get("pristine") and corpus.root.is_dir():
            corpus.files = meta["files"]
            return corpus
    shutil.rmtree(corpus.root, ignore_errors=True)
    shutil.rmtree(corpus.backup, ignore_errors=True)
    rng = random.Random(spec.seed)
    pool = SentencePool(rng)
    n_pdf = round(spec.size * spec.pdf_share)
    pdf_slots = set(rng.sample(range(spec.size), n_pdf)) if n_pdf else set()
    for i in range(spec.size):
        folder = f"area{i // (DOCS_PER_FOLDER * 20):03d}/topic{i // DOCS_PER_FOLDER:05d}"
        target = rng.randint(spec.min_bytes, spec.max_bytes)
        title = f"Note {i}: {rng.choice(pool.sentences)[:50]}"
        if i in pdf_slots:
            rel = f"{folder}/doc{i:06d}.pdf"
            (corpus.root / folder).mkdir(parents=True, exist_ok=True)
            make_pdf(corpus.root / rel, rng, pool, target // 2, title)
        else:
            rel = f"{folder}/doc{i:06d}{rng.choice(SUFFIXES)}"
            (corpus.root / folder).mkdir(parents=True, exist_ok=True)
            (corpus.root / rel).write_text(make_markdown(rng, pool, target, title), encoding="utf-8")
        corpus.files.append(rel)
    corpus.files.sort()
    _write_manifest(corpus, pristine=True)
    return corpus


def _write_manifest(corpus: Corpus, *, pristine: bool, **extra: object) -> None:
    spec = corpus.spec
    old = json.loads(corpus.manifest.read_text()) if corpus.manifest.exists() else {}
    meta = {
        "spec": spec.__dict__,
        "pristine": pristine,
        "files": corpus.files,
        "bytes": sum((corpus.root / f).stat().st_size for f in corpus.files) if pristine else None,
        "sources": extra.get("sources", old.get("sources")),
    }
    corpus.manifest.write_text(json.dumps(meta))


def _source_listing(folders: list[Path]) -> tuple[list[tuple[Path, str]], list[dict[str, object]]]:
    """The indexed files of each folder (sorted), their paths in the copy, and a fingerprint of them."""
    listing: list[tuple[Path, str]] = []
    sources: list[dict[str, object]] = []
    for given in folders:
        folder = given.resolve()
        if not folder.is_dir():
            raise SystemExit(f"--corpus {folder}: not a folder (bench/README.md says how to get the docs)")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in INDEXED_SUFFIXES)
        digest = hashlib.sha256()
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        prefix = folder.name.lstrip("_.") or "docs"
        if any(str(src["prefix"]) == prefix for src in sources):
            raise SystemExit(f"--corpus: two folders would both be copied to {prefix}/")
        listing += [(p, f"{prefix}/{p.relative_to(folder).as_posix()}") for p in files]
        sources.append(
            {"folder": str(folder), "prefix": prefix, "files": len(files), "fingerprint": digest.hexdigest()}
        )
    return listing, sources


def copy_folders(folders: list[Path], base: Path, seed: int = 42) -> Corpus:
    """A corpus of real documents: the .md/.markdown/.txt/.rst/.pdf files under ``folders``, copied
    to ``base/corpus-real-<names>-<hash>/<folder name>/…`` (reused while the sources are unchanged).
    Each folder becomes one top-level folder of the copy (named after it, leading ``_`` dropped)."""
    listing, sources = _source_listing(folders)
    if not listing:
        raise SystemExit(f"--corpus {' '.join(map(str, folders))}: no .md/.txt/.rst/.pdf files")
    names = "+".join(sorted({rel.split("/", 1)[0] for _, rel in listing}))
    tag = hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:8]
    spec = CorpusSpec(size=len(listing), seed=seed, label=f"real-{names}-{tag}")
    corpus = Corpus(spec, base / spec.name)
    if corpus.manifest.exists():
        meta = json.loads(corpus.manifest.read_text())
        if meta.get("pristine") and corpus.root.is_dir() and meta.get("sources") == sources:
            corpus.files = meta["files"]
            return corpus
    shutil.rmtree(corpus.root, ignore_errors=True)
    shutil.rmtree(corpus.backup, ignore_errors=True)
    for src, rel in listing:
        (corpus.root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, corpus.root / rel)
        corpus.files.append(rel)
    corpus.files.sort()
    _write_manifest(corpus, pristine=True, sources=sources)
    return corpus


def corpus_bytes(corpus: Corpus) -> int:
    meta = json.loads(corpus.manifest.read_text())
    return int(meta.get("bytes") or 0)


def pick(corpus: Corpus, share: float, salt: str, *, text_only: bool) -> list[str]:
    """The files a mutation touches: seeded by the corpus spec, so every tool gets the same ones."""
    pool = corpus.text_files() if text_only else list(corpus.files)
    k = max(1, round(len(corpus.files) * share))
    return sorted(random.Random(f"{corpus.spec.name}:{salt}").sample(pool, k))


def _save_original(corpus: Corpus, rel: str) -> None:
    dst = corpus.backup / rel
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus.root / rel, dst)


def modify(corpus: Corpus, share: float = 0.01) -> list[str]:
    """W3's edit: insert one new paragraph in the middle of 1 % of the text files (like a real edit)."""
    _write_manifest(corpus, pristine=False)
    chosen = pick(corpus, share, "modify", text_only=True)
    rng = random.Random(f"{corpus.spec.name}:paragraph")
    for rel in chosen:
        _save_original(corpus, rel)
        path = corpus.root / rel
        text = path.read_text(encoding="utf-8")
        middle = text.find("\n\n", len(text) // 2)
        middle = len(text) // 2 if middle < 0 else middle
        extra = " ".join(" ".join(rng.choices(WORDS, k=14)).capitalize() + "." for _ in range(4))
        path.write_text(f"{text[:middle]}\n\nEdited: {extra}{text[middle:]}", encoding="utf-8")
    return chosen


def delete(corpus: Corpus, share: float = 0.01) -> list[str]:
    """W4's edit: delete 1 % of all files (any type)."""
    _write_manifest(corpus, pristine=False)
    chosen = pick(corpus, share, "delete", text_only=False)
    for rel in chosen:
        _save_original(corpus, rel)
        (corpus.root / rel).unlink(missing_ok=True)
    return chosen


def restore(corpus: Corpus) -> None:
    """Put back every file W3/W4 touched, so the next repetition starts from the same bytes."""
    if corpus.backup.is_dir():
        for src in corpus.backup.rglob("*"):
            if src.is_file():
                shutil.copy2(src, corpus.root / src.relative_to(corpus.backup))
        shutil.rmtree(corpus.backup)
    _write_manifest(corpus, pristine=True)
