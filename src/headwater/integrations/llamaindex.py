"""A LlamaIndex retriever over a headwater home (extra ``[llamaindex]``: llama-index-core).

    from headwater.integrations.llamaindex import HeadwaterRetriever
    retriever = HeadwaterRetriever(home=".hw", k=4)
    nodes = retriever.retrieve("how do retries work?")   # or: await retriever.aretrieve(...)

Each ``NodeWithScore`` holds a ``TextNode`` (``id_`` the chunk id, ``text`` the chunk's text,
``metadata`` the chunk's ``doc_id``, ``uri`` and source span/pages) and ``score``, the cosine
similarity (higher is better). The home's recorded embedder embeds the query, so the hits are
exactly ``headwater query``'s; nothing of LlamaIndex's own embedding or LLM settings is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from headwater.integrations.home_index import HomeIndex


class HeadwaterRetriever(BaseRetriever):
    """``home``: the headwater home; ``k``: hits per query; ``uri_prefix``: only chunks of sources
    under that path; ``settings``: overrides of the home's settings (``vector_store=…``)."""

    def __init__(
        self,
        home: str | Path,
        k: int = 4,
        *,
        uri_prefix: str | None = None,
        settings: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.home, self.k, self.uri_prefix = str(home), k, uri_prefix
        self._index = HomeIndex(self.home, **(settings or {}))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._index.search(query_bundle.query_str, self.k, uri_prefix=self.uri_prefix)
        return [_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self._index.asearch(query_bundle.query_str, self.k, uri_prefix=self.uri_prefix)
        return [_node(hit) for hit in hits]

    def close(self) -> None:
        """Release the embedder and the vector store (a later query opens them again)."""
        self._index.close()


def _node(hit: dict[str, Any]) -> NodeWithScore:
    metadata = {key: value for key, value in hit.items() if key not in ("text", "score", "chunk_id")}
    node = TextNode(id_=hit["chunk_id"], text=hit["text"], metadata=metadata)
    return NodeWithScore(node=node, score=hit["score"])
