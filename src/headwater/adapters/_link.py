"""How a bus adapter reports its link to its server (ports.WatchesState), once per change."""

from __future__ import annotations

from headwater.ports.lifecycle import StateListener


class ReportsLink:
    """Mixin: ``_link("lost" | "regained", detail)`` tells the one listener of each change (a
    failed call after a failed call is no news); ``_where`` names the server without credentials."""

    _where: str
    _listener: StateListener | None = None
    _lost: bool = False

    def watch_state(self, listener: StateListener | None) -> None:
        self._listener = listener

    def _link(self, state: str, detail: str) -> None:
        if self._lost != (state == "lost"):
            self._lost = state == "lost"
            if self._listener is not None:
                self._listener(self._where, state, detail)
