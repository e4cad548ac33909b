"""In-process StreamBus (``memory://NAME``): the default bus for tests and single-process use.

Same contract as the NATS and Redis adapters (tests/contract/test_stream_bus.py): consumer
groups, ack wait, redelivery with a delivery count, nak with delay, a DLQ per topic. Buses
with the same NAME in one process share their topics; nothing survives the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from headwater.models import BusMessage


@dataclass
class _Delivery:
    deliveries: int
    visible_at: float
    consumer: int


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[int, _Delivery] = field(default_factory=dict)  # index → state


@dataclass
class _Topic:
    bodies: list[bytes] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    dead: list[tuple[bytes, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


_BUSES: dict[str, dict[str, _Topic]] = {}


class MemoryBus:
    def __init__(self, url: str, *, ack_wait_seconds: float | None = None) -> None:
        self.url = url
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.name = parts.netloc or parts.path or "default"
        self.ack_wait = ack_wait_seconds or float(query.get("ack_wait", ["30"])[0])
        self._topics: dict[str, _Topic] = {}

    async def open(self) -> None:
        self._topics = _BUSES.setdefault(self.name, {})

    async def close(self) -> None:
        return None

    def _topic(self, name: str) -> _Topic:
        return self._topics.setdefault(name, _Topic())

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        t = self._topic(topic)
        t.bodies.extend(bytes(b) for b in bodies)
        t.changed.set()

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        t = self._topic(topic)
        g = t.groups.setdefault(group, _Group())
        deadline = time.monotonic() + timeout_seconds
        while True:
            taken = self._take(topic, group, t, g, max_messages)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            t.changed.clear()
            # Redeliveries become due without a publish: wake up at least every 50 ms to look.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.05)):
                    await t.changed.wait()

    def _take(self, topic: str, group: str, t: _Topic, g: _Group, limit: int) -> list[BusMessage]:
        now = time.monotonic()
        out: list[BusMessage] = []
        for index in sorted(i for i, d in g.pending.items() if d.visible_at <= now)[:limit]:
            state = g.pending[index]
            state.deliveries += 1
            state.visible_at = now + self.ack_wait
            state.consumer = id(self)
            out.append(self._message(topic, t, (group, index), state.deliveries))
        while len(out) < limit and g.next_index < len(t.bodies):
            index = g.next_index
            g.next_index += 1
            g.pending[index] = _Delivery(1, now + self.ack_wait, id(self))
            out.append(self._message(topic, t, (group, index), 1))
        return out

    @staticmethod
    def _message(topic: str, t: _Topic, handle: tuple[str, int], deliveries: int) -> BusMessage:
        index = handle[1]
        return BusMessage(
            topic=topic, body=t.bodies[index], position=(index + 1, 0), deliveries=deliveries, handle=handle
        )

    def _held(self, message: BusMessage) -> _Delivery | None:
        """The delivery state, if this consumer still holds the message (a late ack after the
        ack wait expired and another consumer took it over is ignored, as on a real bus)."""
        group, index = message.handle
        g = self._topic(message.topic).groups.get(group)
        state = g.pending.get(index) if g is not None else None
        return state if state is not None and state.consumer == id(self) else None

    async def ack(self, messages: Sequence[BusMessage]) -> None:
        for message in messages:
            if self._held(message) is not None:
                group, index = message.handle
                del self._topic(message.topic).groups[group].pending[index]

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        for message in messages:
            if (state := self._held(message)) is not None:
                state.visible_at = time.monotonic() + self.ack_wait

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        for message in messages:
            if (state := self._held(message)) is not None:
                state.visible_at = time.monotonic() + delay_seconds

    async def dead_letter(self, message: BusMessage, reason: str) -> None:
        self._topic(message.topic).dead.append((message.body, reason))
        await self.ack([message])

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        return self._topic(topic).dead[:limit]

    async def pending(self, topic: str, group: str) -> int:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            return len(t.bodies)
        return len(t.bodies) - g.next_index + len(g.pending)
