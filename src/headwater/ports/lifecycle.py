"""What every port with a connection shares: open/close, and reporting the link."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable


@runtime_checkable
class Lifecycle(Protocol):
    """Open and close, shared by the ports whose adapters hold a connection. ``open`` connects
    (constructors do no I/O) and is called before any other method; ``close`` is called after
    the last one returned, and releases what ``open`` took. A closed adapter can be opened
    again, with what it stored intact (a stream worker's pipeline opens its stores per batch)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


StateListener: TypeAlias = "Callable[[str, str, str], None]"
"""(name, state, detail): an adapter's link to its server changed; ``name`` has no credentials."""


@runtime_checkable
class WatchesState(Protocol):
    """Optional, for adapters with a server behind them (embedders, buses): the one listener
    registered is told of each change of their link (events.AdapterStateChange), synchronously
    and from the adapter's event loop; it must not block. None unregisters it."""

    def watch_state(self, listener: StateListener | None) -> None: ...
