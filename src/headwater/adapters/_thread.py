"""A single dedicated thread for a blocking client (SQLite, LanceDB).

Blocking libraries get one thread each, so their connection is only ever touched from that
thread and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


Translate = Callable[[Exception], BaseException | None]
"""A vendor error as the error the engine acts on (a full disk as ENOSPC naming the store), or
None to let it through unchanged."""


class OwnThread:
    """One thread for one client; ``translate`` maps what comes out of it at the boundary.
    A call after ``shutdown`` starts a new thread: a closed store can be opened again (a stream
    worker's pipeline opens and closes its stores once per batch)."""

    def __init__(self, name: str, translate: Translate | None = None) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._translate = translate

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            if self._translate is None or (translated := self._translate(exc)) is None:
                raise
            raise translated from exc

    def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
