"""A LangChain retriever over a headwater home (extra ``[langchain]``: langchain-core).

    from headwater.integrations.langchain import HeadwaterRetriever
    retriever = HeadwaterRetriever(home=".hw", k=4)
    docs = retriever.invoke("how do retries work?")      # or: await retriever.ainvoke(...)

Each ``Document`` has the chunk's text as ``page_content`` and, in ``metadata``, what a citation
needs: ``score`` (cosine similarity, higher is better), ``chunk_id``, ``doc_id``, ``uri``,
``source_start``/``source_end`` (the span in the decoded file) and ``page``/``page_end`` (PDFs).
``id`` is the chunk id. The home's recorded embedder embeds the query, so the hits are exactly
``headwater query``'s.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from headwater.integrations.home_index import HomeIndex


class HeadwaterRetriever(BaseRetriever):
    """``home``: the headwater home; ``k``: hits per query; ``uri_prefix``: only chunks of
    sources under that path (a filter before ranking); ``settings``: overrides of the home's
    settings, as ``load_settings`` takes them (``vector_store=…`` for a store outside the home)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    home: str
    k: int = 4
    uri_prefix: str | None = None
    settings: dict[str, Any] = {}  # noqa: RUF012 - a pydantic field: copied per instance
    _index: HomeIndex | None = PrivateAttr(default=None)

    @property
    def index(self) -> HomeIndex:
        if self._index is None:
            self._index = HomeIndex(self.home, **self.settings)
        return self._index

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [_document(hit) for hit in self.index.search(query, self.k, uri_prefix=self.uri_prefix)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = await self.index.asearch(query, self.k, uri_prefix=self.uri_prefix)
        return [_document(hit) for hit in hits]

    def close(self) -> None:
        """Release the embedder and the vector store (a later query opens them again)."""
        if self._index is not None:
            self._index.close()


def _document(hit: dict[str, Any]) -> Document:
    metadata = {key: value for key, value in hit.items() if key != "text"}
    return Document(page_content=hit["text"], metadata=metadata, id=hit["chunk_id"])
