"""What the StreamBus contract (test_stream_bus.py) cannot say the same way for every bus, on Kafka:
a group's members share partitions (a takeover moves a partition, with its delivery counts), a
restart of a broker that keeps its data (Tansu on S3), keyed partitions placed as Kafka's own
producers place them, and binary-mode CloudEvents (the Kafka protocol binding)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from headwater import cloudevents, registry
from headwater.adapters.kafka import KafkaBus, as_bytes, murmur2_partition
from headwater.errors import ConfigError
from headwater.models import BusMessage
from tests.contract import test_stream_bus as contract
from tests.contract.test_stream_bus import MakeBus, drain
from tests.servers import ServerProcess


def _make(url: str, opened: list[KafkaBus]) -> MakeBus:
    async def make(ack_wait: float = 1.0) -> KafkaBus:
        bus: KafkaBus = registry.create("bus", f"{url}&ack_wait={ack_wait}")
        await bus.open()
        opened.append(bus)
        return bus

    return make


@pytest.fixture
async def kafka(kafka_server: ServerProcess) -> AsyncIterator[MakeBus]:
    opened: list[KafkaBus] = []
    yield _make(kafka_server.url, opened)
    for bus in opened:
        await bus.close()


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def test_a_silent_members_partition_and_its_delivery_counts_go_to_the_group(
    kafka: MakeBus, topic: str
) -> None:
    """``a`` holds four messages and stops polling (hung or killed): after its poll interval
    (three ack waits) the group gives its partition to ``b``, which gets everything from the
    committed offset, ``a``'s four counted as second deliveries (the deliveries journal)."""
    a = await kafka()
    await a.publish(topic, [f'{{"n":{i}}}'.encode() for i in range(10)])
    held = await drain(a, topic, "g", 4)
    assert [m.deliveries for m in held] == [1] * 4
    b = await kafka()
    got = await drain(b, topic, "g", 10, timeout=30)
    assert sorted(m.body for m in got) == sorted(f'{{"n":{i}}}'.encode() for i in range(10))
    counts = {m.body: m.deliveries for m in got}
    assert [counts[m.body] for m in held] == [2] * 4
    assert sum(n == 1 for n in counts.values()) == 6
    await b.ack(got)
    assert await b.pending(topic, "g") == 0


async def test_killed_members_messages_come_back_counted_after_a_restart(kafka: MakeBus, topic: str) -> None:
    """A member closed without acking (a worker killed and restarted): the next one reads from
    the committed offset, and what was handed out counts as delivered — so a message that kills
    every worker reaches the attempt limit."""
    first = await kafka()
    await first.publish(topic, [b"poison", b"ok"])
    for attempt in (1, 2, 3):
        bus = await kafka()
        got = await drain(bus, topic, "g", 2)
        assert [(m.body, m.deliveries) for m in got] == [(b"poison", attempt), (b"ok", attempt)]
        await bus.close()
    bus = await kafka()
    got = await drain(bus, topic, "g", 2)
    await bus.dead_letter(got[0], "too many attempts")
    await bus.ack(got[1:])
    assert await bus.pending(topic, "g") == 0
    assert await bus.dead_letters(topic) == [(b"poison", "too many attempts")]


async def test_keyed_messages_land_where_kafkas_default_partitioner_puts_them(
    kafka: MakeBus, kafka_server: Any, topic: str
) -> None:
    """publish_keyed places keys like librdkafka's murmur2_random (= the Java client's default),
    and partition i is read alone as ``<topic>.p<i>``."""
    bus = await kafka()
    assert isinstance(bus, KafkaBus)
    keys = [f"pump-{i}" for i in range(12)]
    await bus.publish_keyed(topic, 3, [(k, k.encode()) for k in keys])
    seen: dict[str, int] = {}
    for p in range(3):
        got = await drain(bus, f"{topic}.p{p}", "g", 12, timeout=4)
        seen |= {m.body.decode(): p for m in got}
        assert all(m.position[1] == p for m in got)
        await bus.ack(got)
    assert seen == {k: murmur2_partition(k.encode(), 3) for k in keys}
    assert len(set(seen.values())) == 3
    # A plain librdkafka producer with Kafka's default partitioner agrees.
    producer = Producer({"bootstrap.servers": kafka_server.hostport, "partitioner": "murmur2_random"})
    placed: dict[str, int] = {}

    def delivered(_error: object, record: Message) -> None:
        placed[as_bytes(record.key()).decode()] = record.partition() or 0

    for k in keys:
        producer.produce(f"headwater.{topic}", b"x", key=k.encode(), on_delivery=delivered)
    producer.flush(10)
    assert placed == seen
    with pytest.raises(ConfigError, match="3 partitions"):
        await bus.publish_keyed(topic, 2, [("pump-1", b"x")])


async def test_binary_mode_cloudevents_reach_the_worker_as_structured_ones(
    kafka: MakeBus, kafka_server: Any, topic: str
) -> None:
    structured = cloudevents.make_event(
        id="e-1", source="sensors", type=cloudevents.SIGNAL, data=b'{"entity_id":"pump-1","value":1.5}'
    )
    converted = cloudevents.to_binary(structured)
    assert converted is not None
    headers, data = converted
    assert ("ce_id", b"e-1") in headers and data == b'{"entity_id":"pump-1","value":1.5}'
    bus = await kafka()
    await bus.publish(topic, [b"{}"])  # creates the topic
    producer = Producer({"bootstrap.servers": kafka_server.hostport})
    producer.produce(f"headwater.{topic}", data, headers=headers)
    text_headers = [("ce_specversion", b"1.0"), ("ce_id", b"e-2"), ("ce_source", b"s"), ("ce_type", b"t")]
    producer.produce(
        f"headwater.{topic}", b"plain text", headers=[*text_headers, ("content-type", b"text/plain")]
    )
    producer.flush(10)
    got: list[BusMessage] = await drain(bus, topic, "g", 3)
    first, second = cloudevents.decode(got[1].body), cloudevents.decode(got[2].body)
    assert (first.id, first.source, first.type) == ("e-1", "sensors", cloudevents.SIGNAL)
    assert bytes(first.data) == data and first.datacontenttype == "application/json"
    assert (second.id, bytes(second.data), second.datacontenttype) == ("e-2", b'"plain text"', "text/plain")
    await bus.ack(got)


async def test_bus_survives_a_restart_of_a_broker_that_keeps_its_data(
    kafka_s3_server: ServerProcess, topic: str
) -> None:
    """The contract's restart test, on Tansu with S3 storage (the in-memory one loses all)."""
    opened: list[KafkaBus] = []
    try:
        await contract.test_bus_survives_a_server_restart(
            _make(kafka_s3_server.url, opened), topic, kafka_s3_server
        )
    finally:
        for bus in opened:
            await bus.close()


async def test_slow_member_keeps_its_partition_while_it_extends(kafka: MakeBus, topic: str) -> None:
    """``extend`` polls, so a batch longer than the poll interval does not cost the partition."""
    bus = await kafka(ack_wait=1.0)
    await bus.publish(topic, [b"slow"])
    held = await drain(bus, topic, "g", 1)
    for _ in range(12):  # 6 s: twice the poll interval of three ack waits
        await asyncio.sleep(0.5)
        await bus.extend(held)
    await bus.ack(held)
    assert await bus.pending(topic, "g") == 0
