"""One consumer group member of one Kafka topic, as the port's per-message acks (adapters/kafka.py).

Everything here is synchronous and runs on the bus's consumer thread (confluent-kafka calls
block, and rebalance callbacks run inside ``consume``): the asyncio side only awaits it.

Per partition this member owns, it keeps:
- ``committed``: the next offset to commit; every offset below it was acked (or is a gap);
- ``held``: messages handed out and not acked yet, with their delivery count and the time they
  are due again (ack wait, or a nak's delay): those are redelivered from memory, by this member;
- ``acked``: acked offsets above ``committed`` (out-of-order acks), folded in as it advances;
- ``prior``: delivery counts read from the journal when the partition was assigned.

Delivery counts survive a kill -9 and a takeover through the *deliveries journal*: before a
batch is handed out, the counts of the partition's unacked messages are written (one record,
produced and flushed synchronously) to partition P of ``headwater.<topic>.deliveries.<group>``;
the member that gets the partition next reads the last record and continues the counts, so a
message that kills every worker reaches the worker's attempt limit (Kafka's own commit metadata
would do, but the test broker drops it). Acks above a gap are not journaled: after a crash they
are delivered again (at least once; sinks dedup).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from headwater.models import BusMessage

log = logging.getLogger(__name__)


def _debug_log() -> Any:
    from headwater.adapters.kafka import LIBRDKAFKA_LOG

    return LIBRDKAFKA_LOG


_MAX_IN_FLIGHT = 10_000  # held + buffered messages per member: beyond it, no new fetches
_POLL_SLICE = 0.25  # seconds: the longest single poll, so due redeliveries are not held up
_JOURNAL_RUNS = 200  # runs per journal record; beyond it, neighbours merge (counts only rise)

Binary = Callable[[Message], bytes]


@dataclass
class _Held:
    message: Message
    deliveries: int
    due: float


@dataclass
class _Partition:
    committed: int | None = None  # None until the first record of this assignment arrives
    fetched_upto: int | None = None
    held: dict[int, _Held] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    prior: dict[int, int] | None = None
    owned: bool = True

    def advance(self) -> bool:
        moved = False
        while self.committed is not None and self.committed in self.acked:
            self.acked.discard(self.committed)
            self.committed += 1
            moved = True
        return moved


class GroupMember:
    """Reads ``kafka_topic`` (all partitions in the group, or one ``partition`` by assignment)."""

    def __init__(
        self,
        *,
        topic: str,
        kafka_topic: str,
        partition: int | None,
        config: dict[str, Any],
        journal: Journal,
        ack_wait: float,
        body_of: Binary,
    ) -> None:
        self.topic = topic
        self.kafka_topic = kafka_topic
        self.partition = partition
        self.journal = journal
        self.ack_wait = ack_wait
        self.body_of = body_of
        self.parts: dict[int, _Partition] = {}
        self.buffer: list[Message] = []
        self.outage: KafkaError | None = None  # the client's last "brokers down" report
        self.consumer = Consumer({**config, "error_cb": self._on_error}, logger=_debug_log())
        self.join_seconds = 2 * int(config.get("session.timeout.ms", 10_000)) / 1000
        self.joined = partition is not None
        if partition is None:
            self.consumer.subscribe(
                [kafka_topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
            )
        else:
            self.consumer.assign([TopicPartition(kafka_topic, partition)])
            self.parts[partition] = _Partition()

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka reports a lost broker here, not as a failed call: remember it, so the next
        call fails with it (RetryableError, the bus's ``lost`` state) instead of idling."""
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.outage = error

    # -- rebalances: run inside consume/poll ---------------------------------------------------

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        for tp in partitions:
            part = self.parts.setdefault(tp.partition, _Partition())
            part.owned = True
            part.fetched_upto = part.committed  # Kafka resumes at the committed offset
            part.prior = None  # another member may have counted deliveries meanwhile

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        for p in gone:
            if p in self.parts:
                self.parts[p].owned = False  # held ones go to the next owner; late acks wait
        self.buffer = [m for m in self.buffer if m.partition() not in gone]

    # -- the port, synchronously ---------------------------------------------------------------

    def consume(self, max_messages: int, timeout_seconds: float) -> list[BusMessage]:
        """Up to ``max_messages``: redeliveries due first, then new ones. The first call also
        waits (at most ``join_seconds``) for the group join to complete: joining is set-up, not
        idle time, so a worker started with ``--exit-when-idle`` does not stop before it has its
        partitions. (A killed member's partitions move only when its session expires: a worker
        restarted sooner than that gets them one rebalance later.)"""
        join_deadline = time.monotonic() + self.join_seconds
        while not self.joined and time.monotonic() < join_deadline:
            self._poll(max_messages, _POLL_SLICE)
        deadline = time.monotonic() + timeout_seconds
        while True:
            out = self._due(max_messages)
            if len(out) < max_messages:
                wait = 0.0 if out else min(max(deadline - time.monotonic(), 0.0), _POLL_SLICE)
                out += self._fresh(max_messages - len(out), wait)
            if out or time.monotonic() >= deadline:
                break
        if out:
            self._journal({m.handle[0] for m in out})
        return out

    def _due(self, limit: int) -> list[BusMessage]:
        now = time.monotonic()
        due = sorted(
            (
                (o, p, h)
                for p, part in self.parts.items()
                if part.owned
                for o, h in part.held.items()
                if h.due <= now
            ),
            key=lambda x: (x[2].due, x[0]),
        )[:limit]
        out = []
        for offset, p, held in sorted(due, key=lambda x: (x[0], x[1])):
            held.deliveries += 1
            held.due = now + self.ack_wait
            out.append(self._message(p, offset, held))
        return out

    def _fresh(self, limit: int, wait: float) -> list[BusMessage]:
        polled = False
        while len(self.buffer) < limit and self._in_flight() < _MAX_IN_FLIGHT:
            got = self._poll(min(limit - len(self.buffer), 10_000), 0.0 if polled else wait)
            polled = True
            if got == 0:
                break
        if not polled and wait > 0:
            time.sleep(min(wait, 0.05))
        out: list[BusMessage] = []
        rest: list[Message] = []
        for record in self.buffer:
            if len(out) >= limit:
                rest.append(record)
                continue
            message = self._take(record)
            if message is not None:
                out.append(message)
        self.buffer = rest
        return out

    def _in_flight(self) -> int:
        return len(self.buffer) + sum(len(part.held) for part in self.parts.values())

    def _poll(self, limit: int, wait: float) -> int:
        """Fetch into the buffer (how many came); an error record (broker down) raises."""
        records = self.consumer.consume(num_messages=limit, timeout=wait)
        if self.outage is not None and not records:
            outage, self.outage = self.outage, None
            raise KafkaException(outage)
        self.outage = None
        for record in records:
            error = record.error()
            if error is None:
                self.buffer.append(record)
            elif error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
        return len(records)

    def _take(self, record: Message) -> BusMessage | None:
        """A fetched record as a delivery, or None: already acked, or no longer ours."""
        p, offset = record.partition(), record.offset()
        assert p is not None and offset is not None
        part = self.parts.get(p)
        if part is None or not part.owned:
            return None
        if part.committed is None:  # the first record of a fresh assignment: Kafka's position
            part.committed = part.fetched_upto = offset
        assert part.fetched_upto is not None
        if offset > part.fetched_upto and offset - part.fetched_upto < _MAX_IN_FLIGHT:
            part.acked.update(range(part.fetched_upto, offset))  # gaps (control records)
        part.fetched_upto = max(part.fetched_upto, offset + 1)
        if offset < part.committed or offset in part.acked:
            return None
        if part.prior is None:
            part.prior = self.journal.read(p, part.committed)
        before = part.held[offset].deliveries if offset in part.held else part.prior.get(offset, 0)
        held = _Held(record, before + 1, time.monotonic() + self.ack_wait)
        part.held[offset] = held
        return self._message(p, offset, held)

    def _message(self, p: int, offset: int, held: _Held) -> BusMessage:
        return BusMessage(
            topic=self.topic, body=self.body_of(held.message), position=(offset, p),
            deliveries=held.deliveries, handle=(p, offset, self),
        )  # fmt: skip

    def _journal(self, partitions: set[int]) -> None:
        for p in sorted(partitions):
            part = self.parts[p]
            counts = dict(part.prior or {})
            counts.update({o: h.deliveries for o, h in part.held.items()})
            floor = part.committed or 0
            self.journal.write(
                p, floor, {o: n for o, n in counts.items() if o >= floor and o not in part.acked}
            )

    def _owned(self, handles: Sequence[tuple[int, int, GroupMember]]) -> list[_Partition]:
        """The partitions of these messages, polling briefly while one is being reassigned to
        us; one owned by another member now is a RetryableError for the caller (its ack is the
        new owner's redelivery, which the sink finds already done)."""
        for _ in range(2):
            parts = [self.parts.get(p) for p, _, _ in handles]
            if all(part is not None and part.owned for part in parts):
                return [part for part in parts if part is not None]
            self._poll(100, 0.5)
        msg = "partition not assigned to this consumer (rebalanced): the new owner redelivers"
        raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, msg))

    def ack(self, handles: Sequence[tuple[int, int, GroupMember]]) -> None:
        moved: set[int] = set()
        for (p, offset, _), part in zip(handles, self._owned(handles), strict=True):
            part.held.pop(offset, None)
            if part.committed is not None and offset >= part.committed:
                part.acked.add(offset)
                if part.advance():
                    moved.add(p)
        if moved:
            offsets = [
                TopicPartition(self.kafka_topic, p, self.parts[p].committed or 0) for p in sorted(moved)
            ]
            self.consumer.commit(offsets=offsets, asynchronous=False)

    def delay(self, handles: Sequence[tuple[int, int, GroupMember]], seconds: float) -> None:
        """Extend (the ack wait) or nak (a delay): the message is due again ``seconds`` from now;
        the poll keeps this member in its group while a slow batch is processed."""
        due = time.monotonic() + seconds
        for p, offset, _ in handles:
            part = self.parts.get(p)
            if part is not None and offset in part.held:
                part.held[offset].due = due
        if self._in_flight() < _MAX_IN_FLIGHT:
            self._poll(100, 0)

    def close(self) -> None:
        self.consumer.close()  # leaves the group: the partitions move at once


class Journal:
    """Delivery counts per partition, last record wins (see the module docstring)."""

    def __init__(self, producer: Producer, reader_config: dict[str, Any], journal_topic: str) -> None:
        self.producer = producer
        self.reader_config = reader_config
        self.journal_topic = journal_topic
        self.ensure: Callable[[], None] = lambda: None  # creates the topic (set by the bus)

    def write(self, partition: int, floor: int, counts: dict[int, int]) -> None:
        self.ensure()
        runs = _runs(counts)
        errors: list[KafkaError] = []
        self.producer.produce(
            self.journal_topic, json.dumps({"from": floor, "runs": runs}).encode(), partition=partition,
            on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
        )  # fmt: skip
        self.producer.flush(10)
        if errors or len(self.producer) > 0:
            raise KafkaException(errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT))

    def read(self, partition: int, floor: int) -> dict[int, int]:
        """The counts of offsets ≥ ``floor`` from the partition's last journal record."""
        self.ensure()
        reader = Consumer(self.reader_config, logger=_debug_log())
        try:
            tp = TopicPartition(self.journal_topic, partition)
            low, high = reader.get_watermark_offsets(tp, timeout=10)
            if high <= low:
                return {}
            reader.assign([TopicPartition(self.journal_topic, partition, high - 1)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                record = reader.poll(0.5)
                if record is not None and record.error() is None:
                    return _counts(record.value() or b"{}", floor)
            msg = f"journal {self.journal_topic}[{partition}] unreadable"
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, msg))
        finally:
            reader.close()


def _runs(counts: dict[int, int]) -> list[list[int]]:
    """{offset: n} as [[first, last, n], ...]; capped at _JOURNAL_RUNS by merging neighbours
    (a merged run takes the larger count: an innocent message may look one attempt older)."""
    runs: list[list[int]] = []
    for offset in sorted(counts):
        n = counts[offset]
        if runs and runs[-1][1] == offset - 1 and runs[-1][2] == n:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset, n])
    while len(runs) > _JOURNAL_RUNS:
        merged = []
        for i in range(0, len(runs) - 1, 2):
            a, b = runs[i], runs[i + 1]
            merged.append([a[0], b[1], max(a[2], b[2])])
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return runs


def _counts(raw: bytes, floor: int) -> dict[int, int]:
    try:
        runs = json.loads(raw).get("runs", [])
    except (ValueError, AttributeError):
        return {}
    return {o: int(n) for first, last, n in runs for o in range(max(int(first), floor), int(last) + 1)}
