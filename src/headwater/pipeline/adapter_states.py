"""AdapterStateChange events from the adapters that report their link (ports.WatchesState): an
embedder's breaker opening and closing, a bus connection lost and regained. Adapters call back
synchronously, from their own code paths; the run emits the events in order at its next chance."""

from __future__ import annotations

import functools
from collections.abc import Callable

from headwater.events import AdapterStateChange
from headwater.ports import WatchesState


class AdapterStates:
    def __init__(self, run_id: str = "", wake: Callable[[], None] | None = None) -> None:
        self.run_id = run_id
        self._wake = wake  # told when a change arrives (a run that emits from its own task)
        self._pending: list[AdapterStateChange] = []
        self._watched: list[WatchesState] = []

    def watch(self, adapter: object, kind: str) -> None:
        """Listen to ``adapter`` if it reports its link; ``kind`` ("embedder", "bus") names its role."""
        if isinstance(adapter, WatchesState):
            adapter.watch_state(functools.partial(self._changed, kind))
            self._watched.append(adapter)

    def _changed(self, kind: str, name: str, state: str, detail: str) -> None:
        self._pending.append(
            AdapterStateChange(run_id=self.run_id, adapter=kind, name=name, state=state, detail=detail)
        )
        if self._wake is not None:
            self._wake()

    def take(self) -> list[AdapterStateChange]:
        """The changes not handed out yet, oldest first."""
        pending, self._pending = self._pending, []
        return pending

    def close(self) -> None:
        for adapter in self._watched:
            adapter.watch_state(None)
        self._watched.clear()
