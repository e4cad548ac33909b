"""The LangChain and LlamaIndex retrievers answer exactly what ``headwater query`` answers, from
any home (its recorded embedder, a store outside it), sync and async, with the source filter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from headwater.errors import NoHome
from tests.conftest import Cli
from tests.servers import ServerProcess

QUESTION = "how do retries work?"


def cli_hits(cli: Cli, home: Path, k: int, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    (hits,) = cli.json_lines("query", QUESTION, "--home", str(home), "-k", str(k), "--json", env=env)
    return hits


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from tests.conftest import ROOT, SAMPLES

    home = tmp_path_factory.mktemp("integrations") / "home"
    corpus = home.parent / "corpus"
    shutil.copytree(SAMPLES / "docs", corpus)
    Cli({"HEADWATER_EMBEDDER": "hash://", "PYTHONPATH": str(ROOT / "src")})(
        "ingest", "docs", str(corpus), "--home", str(home)
    )
    return home


def test_langchain_retriever_gives_the_cli_hits_sync_and_async(cli: Cli, built: Path) -> None:
    from langchain_core.documents import Document

    from headwater.integrations.langchain import HeadwaterRetriever

    want = cli_hits(cli, built, 4)
    retriever = HeadwaterRetriever(home=str(built), k=4)
    try:
        docs = retriever.invoke(QUESTION)
        again = asyncio.run(retriever.ainvoke(QUESTION))
    finally:
        retriever.close()
    assert len(want) == 4 and all(isinstance(d, Document) for d in docs)
    assert [(d.id, d.page_content) for d in docs] == [(h["chunk_id"], h["text"]) for h in want]
    assert [d.metadata["score"] for d in docs] == pytest.approx([h["score"] for h in want])
    assert docs[0].metadata["uri"] == want[0]["uri"] and "source_start" in docs[0].metadata
    assert [d.id for d in again] == [d.id for d in docs]


def test_llamaindex_retriever_gives_the_cli_hits_sync_and_async(cli: Cli, built: Path) -> None:
    from llama_index.core.schema import NodeWithScore

    from headwater.integrations.llamaindex import HeadwaterRetriever

    want = cli_hits(cli, built, 3)
    retriever = HeadwaterRetriever(built, k=3)
    try:
        nodes = retriever.retrieve(QUESTION)
        again = asyncio.run(retriever.aretrieve(QUESTION))
    finally:
        retriever.close()
    assert all(isinstance(n, NodeWithScore) for n in nodes)
    assert [(n.node.node_id, n.node.get_content()) for n in nodes] == [
        (h["chunk_id"], h["text"]) for h in want
    ]
    assert [n.score for n in nodes] == pytest.approx([h["score"] for h in want])
    assert nodes[0].node.metadata["uri"] == want[0]["uri"]
    assert [n.node.node_id for n in again] == [n.node.node_id for n in nodes]


def test_a_source_prefix_filters_before_ranking(built: Path) -> None:
    from headwater.integrations.langchain import HeadwaterRetriever

    retriever = HeadwaterRetriever(home=str(built), k=3, uri_prefix="reference/")
    try:
        docs = retriever.invoke(QUESTION)
    finally:
        retriever.close()
    assert docs and all(d.metadata["uri"].startswith("reference/") for d in docs)


def test_a_home_on_pgvector_is_read_through_the_settings(
    cli: Cli, corpus: Path, tmp_path: Path, pgvector_server: ServerProcess, unique: str
) -> None:
    from headwater.integrations.llamaindex import HeadwaterRetriever

    url = f"pgvector://{pgvector_server.netloc}/postgres?table=lx_{unique}"  # type: ignore[attr-defined]
    home, env = tmp_path / "pg-home", {"HEADWATER_VECTOR_STORE": url}
    cli("ingest", "docs", str(corpus), "--home", str(home), env=env)
    want = cli_hits(cli, home, 2, env=env)
    retriever = HeadwaterRetriever(home, k=2, settings={"vector_store": url})
    try:
        assert [n.node.node_id for n in retriever.retrieve(QUESTION)] == [h["chunk_id"] for h in want]
    finally:
        retriever.close()


def test_a_folder_that_is_no_home_is_refused(tmp_path: Path) -> None:
    from headwater.integrations.langchain import HeadwaterRetriever

    with pytest.raises(NoHome, match="no headwater home"):
        HeadwaterRetriever(home=str(tmp_path / "nothing"), k=2).invoke(QUESTION)


def test_the_readme_example_runs_as_written(cli: Cli, corpus: Path, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("### Retrievers for LangChain and LlamaIndex")[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    cli("ingest", "docs", str(corpus), "--home", str(tmp_path / ".hw"))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli.env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example prints the first hit"
