"""Read a headwater index from an application's own framework: retrievers for LangChain
(``headwater.integrations.langchain``, extra ``[langchain]``) and LlamaIndex
(``headwater.integrations.llamaindex``, extra ``[llamaindex]``).

Both query a home exactly as ``headwater query`` does (the home's recorded embedder, its vector
store, the same scores) through one ``HomeIndex``, which keeps the index open between queries.
"""

from headwater.integrations.home_index import HomeIndex

__all__ = ["HomeIndex"]
