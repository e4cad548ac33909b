"""The StreamBus contract (ports.StreamBus), run on every adapter against the real server.

``bus_url`` (tests/conftest.py) yields one URL per adapter: the in-memory bus, and NATS
JetStream, Redis Streams and Kafka (a Tansu broker) started on 127.0.0.1 by tests/servers. Each
test uses a fresh topic, so the servers are shared across tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from headwater import registry
from headwater.errors import RetryableError
from headwater.models import BusMessage
from headwater.ports import StreamBus, WatchesState
from tests.servers import ServerProcess

MakeBus = Callable[..., Awaitable[StreamBus]]
T = TypeVar("T")


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


async def test_consumers_of_one_group_share_and_take_over(
    make_bus: MakeBus, topic: str, bus_url: str
) -> None:
    """Two workers of one group split the messages; one that dies leaves its share to the other."""
    if bus_url.startswith("kafka://"):
        pytest.skip("Kafka's members share partitions, not messages: test_kafka_bus.py has its takeover")
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


async def test_nak_with_a_delay_longer_than_the_ack_wait(make_bus: MakeBus, topic: str) -> None:
    """The delay wins over the ack wait: no early redelivery (Redis must keep a not-before time)."""
    bus = await make_bus(ack_wait=1.0)
    await bus.publish(topic, [b'{"x":1}'])
    first = await drain(bus, topic, "g", 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bus.nak(first, delay_seconds=2.5)
    again = await drain(bus, topic, "g", 1, timeout=15)
    assert [m.body for m in again] == [b'{"x":1}'] and again[0].deliveries == 2
    assert loop.time() - started >= 2.2
    await bus.ack(again)
    assert await bus.pending(topic, "g") == 0


async def retrying(call: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """What a worker does: retry a RetryableError with a short pause until the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except RetryableError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_bus_survives_a_server_restart(
    make_bus: MakeBus, topic: str, bus_server: ServerProcess | None
) -> None:
    """While the server is down, calls fail with RetryableError only; once it is back on the same
    port and data, the open bus works again: an ack of a message delivered before the restart
    counts, unconsumed messages are still there, new ones flow."""
    if bus_server is None:
        pytest.skip("the in-memory bus has no server to restart")
    if bus_server.url.startswith("kafka://") and "memory" in getattr(bus_server, "storage", ""):
        pytest.skip("this Tansu keeps no data over a restart: test_kafka_bus.py restarts an S3-backed one")
    bus = await make_bus(ack_wait=30)
    changes: list[tuple[str, str]] = []
    assert isinstance(bus, WatchesState), "a bus with a server reports its link (AdapterStateChange)"
    bus.watch_state(lambda name, state, _detail: changes.append((name, state)))
    await bus.publish(topic, [b"before-1", b"before-2"])
    held = await bus.consume(topic, "g", max_messages=1, timeout_seconds=5)
    assert [m.body for m in held] == [b"before-1"]

    await asyncio.to_thread(bus_server.stop)
    with pytest.raises(RetryableError):
        await bus.publish(topic, [b"down"])
    with contextlib.suppress(RetryableError):
        assert await bus.consume(topic, "g", max_messages=5, timeout_seconds=0.5) == []
    await asyncio.to_thread(bus_server.start)

    await retrying(lambda: bus.ack(held))
    await retrying(lambda: bus.publish(topic, [b"after"]))
    got: list[BusMessage] = []
    deadline = asyncio.get_running_loop().time() + 20
    while not {b"before-2", b"after"} <= {m.body for m in got}:
        assert asyncio.get_running_loop().time() < deadline, [m.body for m in got]
        got += await retrying(lambda: bus.consume(topic, "g", max_messages=5, timeout_seconds=0.5))
    # "down" may have reached the server after all (at least once): never anything else.
    assert {m.body for m in got} <= {b"before-2", b"after", b"down"}
    await retrying(lambda: bus.ack(got))
    assert await retrying(lambda: bus.pending(topic, "g")) == 0
    # The link was reported lost, then regained, naming the server without credentials.
    states = [state for _, state in changes]
    assert states[:1] == ["lost"] and states[-1] == "regained", changes
    assert all(a != b for a, b in itertools.pairwise(states)), changes  # changes only
    assert all("127.0.0.1" in name and "@" not in name for name, _ in changes), changes


async def test_dead_letters_keep_body_and_reason_exactly(make_bus: MakeBus, topic: str) -> None:
    """Reasons carry tracebacks: several lines, non-ASCII, '%', outer spaces; bodies may be empty."""
    bus = await make_bus()
    reason = '  Traceback (most recent call last):\n  File "x.py", line 1\nValueError: 100% kaputt ✗  '
    await bus.publish(topic, [b"", b"\x00\xff binary"])
    got = await drain(bus, topic, "g", 2)
    await bus.dead_letter(got[0], reason)
    await bus.dead_letter(got[1], "")
    assert await bus.dead_letters(topic) == [(b"", reason), (b"\x00\xff binary", "")]
    assert await bus.dead_letters(topic, limit=1) == [(b"", reason)]
    assert await bus.dead_letters(f"{topic}.other") == []


async def test_large_batches_keep_their_order_and_new_groups_see_everything(
    make_bus: MakeBus, topic: str
) -> None:
    bus = await make_bus()
    bodies = [f'{{"n":{i}}}'.encode() for i in range(2500)]
    await bus.publish(topic, bodies)
    assert await bus.pending(topic, "never-consumed") == 2500
    got = await drain(bus, topic, "g", 2500, timeout=30)
    assert [m.body for m in got] == bodies
    await bus.ack(got)
    assert await bus.pending(topic, "g") == 0


async def test_an_unreachable_server_is_a_retryable_error_without_credentials(bus_url: str) -> None:
    scheme = bus_url.partition("://")[0]
    if scheme == "memory":
        pytest.skip("the in-memory bus has no server")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bus: StreamBus = registry.create("bus", f"{scheme}://user:s3cret@127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryableError) as caught:
        await bus.open()
    assert loop.time() - started < 10
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)


async def test_bus_recovers_after_a_server_crash(
    make_bus: MakeBus, topic: str, bus_server: ServerProcess | None
) -> None:
    """SIGKILL instead of a clean stop: what survives is the server's business (Redis without
    persistence loses the stream and its groups), but the open bus must work again."""
    if bus_server is None:
        pytest.skip("the in-memory bus has no server to crash")
    bus = await make_bus(ack_wait=30)
    await bus.publish(topic, [b"before"])
    assert await bus.consume(topic, "g", max_messages=1, timeout_seconds=5)
    await asyncio.to_thread(bus_server.stop, crash=True)
    await asyncio.to_thread(bus_server.start)
    await retrying(lambda: bus.publish(topic, [b"after"]))
    got: list[BusMessage] = []
    deadline = asyncio.get_running_loop().time() + 20
    while b"after" not in {m.body for m in got}:
        assert asyncio.get_running_loop().time() < deadline
        got += await retrying(lambda: bus.consume(topic, "g", max_messages=5, timeout_seconds=0.5))
    await retrying(lambda: bus.ack(got))


async def test_extend_keeps_a_slow_message_from_going_to_another_consumer(
    make_bus: MakeBus, topic: str
) -> None:
    slow, other = await make_bus(ack_wait=1.0), await make_bus(ack_wait=1.0)
    await slow.publish(topic, [b'{"slow":1}'])
    held = await drain(slow, topic, "g", 1)
    for _ in range(5):  # 2.5 s of work, longer than the ack wait, with a keep-alive every 0.5 s
        await asyncio.sleep(0.5)
        await slow.extend(held)
        assert await other.consume(topic, "g", max_messages=1, timeout_seconds=0.01) == []
    await slow.ack(held)
    assert await other.consume(topic, "g", max_messages=1, timeout_seconds=1.5) == []
