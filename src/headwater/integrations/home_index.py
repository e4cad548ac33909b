"""One home's index, open for many queries from synchronous and asynchronous callers alike.

Frameworks call retrievers from plain threads (LangChain's ``invoke``), from their own event
loops (``ainvoke``, LlamaIndex's ``aretrieve``), or both. The index's adapters may be bound to
the loop that opened them (a connection pool is), so the index lives on a private event loop in
a daemon thread, and every query — sync or async, from any loop — runs there: the embedder (its
model loaded once) and the vector store stay open between queries, as in ``headwater serve``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from headwater.config import Settings, load_settings

T = TypeVar("T")


class HomeIndex:
    """The ``k`` chunks of a home nearest to a text, as ``headwater query --json`` gives them:
    dicts with ``text``, ``score`` (cosine similarity, higher is better), ``chunk_id``,
    ``doc_id``, ``uri`` and the span fields. ``settings`` are the home's: its recorded embedder
    is used whatever the environment says, and ``HEADWATER_VECTOR_STORE`` (or ``overrides``)
    names a store outside the home."""

    def __init__(self, home: str | Path, **overrides: Any) -> None:
        from headwater.cli.guard import existing_home  # a folder that is no home is refused, as by `query`

        self.settings: Settings = existing_home(load_settings(home=str(home), **overrides))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._searcher: Any = None
        self._guard = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None:
                from headwater.ops.search import Searcher

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="headwater-index", daemon=True).start()
                self._searcher, self._loop = Searcher(self.settings), loop
            return self._loop

    def _submit(self, call: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._start()))

    def search(self, text: str, k: int = 4, *, uri_prefix: str | None = None) -> list[dict[str, Any]]:
        """From synchronous code (not from inside a running event loop: use ``asearch`` there)."""
        return asyncio.run_coroutine_threadsafe(self._search(text, k, uri_prefix), self._start()).result()

    async def asearch(self, text: str, k: int = 4, *, uri_prefix: str | None = None) -> list[dict[str, Any]]:
        return await self._submit(self._search(text, k, uri_prefix))

    async def _search(self, text: str, k: int, uri_prefix: str | None) -> list[dict[str, Any]]:
        hits: list[dict[str, Any]] = await self._searcher.search(text, k, uri_prefix=uri_prefix)
        return hits

    def close(self) -> None:
        """Close the embedder and the store and stop the private loop; a later query reopens them."""
        with self._guard:
            loop, self._loop = self._loop, None
            searcher, self._searcher = self._searcher, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(searcher.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
