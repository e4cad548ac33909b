"""The StreamBus contract (ports.StreamBus), run on every adapter against the real server.

``bus_url`` (tests/conftest.py) yields one URL per adapter: the in-memory bus, and NATS
JetStream and Redis Streams started on 127.0.0.1 by tests/servers. Each test uses a fresh
topic, so the servers are shared across tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from headwater import registry
from headwater.ports import BusMessage, StreamBus

MakeBus = Callable[..., Awaitable[StreamBus]]


@pytest.fixture
async def make_bus(bus_url: str) -> AsyncIterator[MakeBus]:
    opened: list[StreamBus] = []

    async def make(ack_wait: float = 1.0) -> StreamBus:
        sep = "&" if "?" in bus_url else "?"
        bus: StreamBus = registry.create("bus", f"{bus_url}{sep}ack_wait={ack_wait}")
        await bus.open()
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.close()


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def drain(bus: StreamBus, topic: str, group: str, want: int, timeout: float = 10) -> list[BusMessage]:
    got: list[BusMessage] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        got += await bus.consume(topic, group, max_messages=want - len(got), timeout_seconds=0.5)
    return got


async def test_publish_then_consume_in_order_and_ack(make_bus: MakeBus, topic: str) -> None:
    bus = await make_bus()
    bodies = [f'{{"n":{i}}}'.encode() for i in range(25)]
    await bus.publish(topic, bodies)
    got = await drain(bus, topic, "g", 25)
    assert [m.body for m in got] == bodies
    assert [m.deliveries for m in got] == [1] * 25
    positions = [m.position for m in got]
    assert positions == sorted(positions) and len(set(positions)) == 25
    assert await bus.pending(topic, "g") == 25
    await bus.ack(got)
    assert await bus.pending(topic, "g") == 0
    assert await bus.consume(topic, "g", max_messages=10, timeout_seconds=0.3) == []


async def test_each_group_gets_every_message(make_bus: MakeBus, topic: str) -> None:
    bus = await make_bus()
    await bus.publish(topic, [b'{"a":1}', b'{"a":2}'])
    a = await drain(bus, topic, "ga", 2)
    b = await drain(bus, topic, "gb", 2)
    assert [m.body for m in a] == [m.body for m in b] == [b'{"a":1}', b'{"a":2}']


async def test_unacked_message_is_redelivered_with_a_delivery_count(make_bus: MakeBus, topic: str) -> None:
    bus = await make_bus(ack_wait=1.0)
    await bus.publish(topic, [b'{"x":1}'])
    first = await drain(bus, topic, "g", 1)
    assert first[0].deliveries == 1
    again = await drain(bus, topic, "g", 1, timeout=10)  # after the ack wait
    assert [m.body for m in again] == [b'{"x":1}'] and again[0].deliveries == 2
    assert again[0].position == first[0].position
    await bus.ack(again)
    assert await bus.consume(topic, "g", max_messages=1, timeout_seconds=1.5) == []


async def test_nak_with_delay_redelivers_after_the_delay(make_bus: MakeBus, topic: str) -> None:
    bus = await make_bus(ack_wait=30)
    await bus.publish(topic, [b'{"x":1}'])
    first = await drain(bus, topic, "g", 1)
    await bus.nak(first, delay_seconds=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    again = await drain(bus, topic, "g", 1, timeout=10)
    assert again and again[0].deliveries == 2
    assert loop.time() - started >= 0.3
    await bus.ack(again)


async def test_consumers_of_one_group_share_and_take_over(make_bus: MakeBus, topic: str) -> None:
    """Two workers of one group split the messages; one that dies leaves its share to the other."""
    a, b = await make_bus(ack_wait=1.0), await make_bus(ack_wait=1.0)
    await b.consume(topic, "g", max_messages=1, timeout_seconds=0.1)  # b joins the group first
    await a.publish(topic, [f'{{"n":{i}}}'.encode() for i in range(10)])
    held_by_a = await a.consume(topic, "g", max_messages=4, timeout_seconds=2)
    assert 0 < len(held_by_a) <= 4
    rest = await drain(b, topic, "g", 10 - len(held_by_a))
    await b.ack(rest)
    # a "dies" without acking: after the ack wait, b gets a's messages again.
    taken_over = await drain(b, topic, "g", len(held_by_a), timeout=15)
    assert sorted(m.body for m in taken_over) == sorted(m.body for m in held_by_a)
    assert all(m.deliveries >= 2 for m in taken_over)
    await b.ack(taken_over)
    assert sorted(m.body for m in rest + taken_over) == sorted(f'{{"n":{i}}}'.encode() for i in range(10))
    assert await b.pending(topic, "g") == 0


async def test_dead_letter_removes_the_message_and_keeps_it_with_its_reason(
    make_bus: MakeBus, topic: str
) -> None:
    bus = await make_bus(ack_wait=1.0)
    await bus.publish(topic, [b"poison", b'{"ok":1}'])
    got = await drain(bus, topic, "g", 2)
    await bus.dead_letter(got[0], "InputError: not JSON")
    await bus.ack(got[1:])
    assert await bus.dead_letters(topic) == [(b"poison", "InputError: not JSON")]
    assert await bus.consume(topic, "g", max_messages=5, timeout_seconds=1.5) == []
    assert await bus.pending(topic, "g") == 0


async def test_pending_counts_unconsumed_messages_as_lag(make_bus: MakeBus, topic: str) -> None:
    bus = await make_bus()
    await bus.consume(topic, "g", max_messages=1, timeout_seconds=0.1)
    await bus.publish(topic, [b"1", b"2", b"3"])
    assert await bus.pending(topic, "g") == 3
    got = await drain(bus, topic, "g", 1)
    await bus.ack(got)
    assert await bus.pending(topic, "g") == 2


async def test_messages_survive_reopening_the_bus(make_bus: MakeBus, topic: str) -> None:
    first = await make_bus()
    await first.publish(topic, [b'{"kept":1}'])
    await first.close()
    second = await make_bus()
    got = await drain(second, topic, "g", 1)
    assert [m.body for m in got] == [b'{"kept":1}']
