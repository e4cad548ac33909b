"""A CPU pool that survives crashing or hanging inputs: extraction of hostile PDFs runs here."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from headwater.child_processes import die_with_parent, fork_is_safe
from headwater.errors import InputError

T = TypeVar("T")


class CpuPool:
    """Runs picklable functions in worker processes (one per core by default).

    A task that hangs past its timeout or kills its worker (segfault, OOM) breaks only itself:
    the pool is replaced and the task fails with InputError; other tasks in flight are re-run.
    With ``workers == 1`` tasks run in a thread instead (no start-up cost, easier debugging).
    """

    def __init__(self, workers: int, timeout_seconds: float) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout_seconds = timeout_seconds
        self._executor: Executor | None = None
        self._generation = 0

    def _get(self) -> Executor:
        if self._executor is None:
            # Forking after lancedb started its runtime threads risks a deadlock in the child; a
            # process that already loaded it (a repair after verify, an embedding application)
            # extracts in a thread instead.
            if self.workers == 1 or not fork_is_safe():
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
            else:
                import multiprocessing

                # fork, not spawn: spawn re-imports the caller's __main__, which breaks every user
                # script without a __main__ guard. The children run only pure stage functions,
                # whose imports are done here first so no child ever imports under a held lock.
                import pypdfium2  # noqa: F401
                import semchunk  # noqa: F401

                ctx = multiprocessing.get_context("fork")
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=ctx, initializer=die_with_parent
                )
        return self._executor

    def _replace(self, generation: int) -> None:
        if generation != self._generation or self._executor is None:
            return  # another task already replaced it
        executor, self._executor = self._executor, None
        self._generation += 1
        if isinstance(executor, ProcessPoolExecutor):
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    async def start(self) -> None:
        """Fork every worker now, before the process loads libraries with threads of their own
        (lancedb's runtime): a fork taken while such a thread holds a lock can deadlock."""
        executor = self._get()
        if isinstance(executor, ProcessPoolExecutor):
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(executor, time.sleep, 0.01) for _ in range(self.workers))
            )

    async def run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(3):
            generation = self._generation
            future = loop.run_in_executor(self._get(), fn, *args)
            try:
                # Not wait_for: on Python 3.11 it returns the result of a future that finishes as
                # the caller is cancelled, swallowing the cancellation; the stopped run then goes
                # on into queues nobody reads any more, and a pause or a Ctrl-C never settles.
                async with asyncio.timeout(self.timeout_seconds):
                    return await future
            except TimeoutError as exc:
                self._replace(generation)
                msg = f"{what}: extraction took longer than {self.timeout_seconds:g} s"
                raise InputError(msg, field="content") from exc
            except BrokenProcessPool as exc:
                self._replace(generation)
                if attempt == 2:
                    msg = f"{what}: the extraction process crashed on this input (3 times)"
                    raise InputError(msg, field="content") from exc
        msg = "unreachable"
        raise AssertionError(msg)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
