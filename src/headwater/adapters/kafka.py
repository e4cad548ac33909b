"""Kafka StreamBus (``kafka://HOST:PORT[,HOST:PORT]?ack_wait=SECONDS``), extra ``kafka``.

Client: confluent-kafka (librdkafka), not aiokafka: it is Confluent's maintained client, follows
the protocol's new features first (idempotent producer, cooperative rebalancing, KIP-848), and its
C core produces and fetches several times faster than a pure-Python client on a 2-core machine.
Its calls block, so they run on dedicated threads (adapters/_thread.py): one for the consumers,
one for the producer; the event loop never waits on librdkafka.

Mapping: topic ``docs`` → Kafka topic ``headwater.docs``; ``signals.p3`` → partition 3 of
``headwater.signals`` (what ``publish signals --partitions N`` writes: events keyed by
``entity_id`` and placed by Kafka's default partitioner, murmur2 as in the Java client, so any
producer keyed by entity_id lands in the same partition). A group is a Kafka consumer group:
``consume("docs", g)`` subscribes (cooperative-sticky: the group shares the partitions and takes
a dead member's over), ``consume("signals.p3", g)`` is assigned that one partition (one signal
worker per partition keeps the partition's order and watermark), committing under ``g``. Topics
the bus creates get ``?partitions=N`` partitions (default 1: a topic's messages in one order).
Dead letters → ``headwater.<topic>.dlq``, the reason in the ``headwater-reason`` header.

The port's per-message acks on Kafka's offsets (adapters/kafka_group.py):
- ``ack`` marks the offset; the highest contiguous acked offset + 1 is committed synchronously,
  so a commit happens only after the sink committed (the worker acks after it). ``pending`` right
  after is exact.
- An unacked message past the ack wait, or a nak'd one after its delay, is redelivered from
  memory by the member that holds its partition (``deliveries`` + 1); ``extend`` restarts the
  wait (and polls, so a slow batch keeps the member in its group). A member that dies or stops
  polling (``max.poll.interval.ms`` = 3 ack waits) loses its partitions; the next owner reads
  from the committed offset and the deliveries journal gives the counts (kafka_group.py).
- ``dead_letter`` produces to the DLQ and waits for the broker's ack, then acks.
- ``pending`` = Σ over the topic's partitions of high watermark - the group's committed offset
  (the log start for a group that committed nothing): lag from committed offsets, so messages
  delivered but unacked count. Tansu (the broker the tests run) reports a wrong high watermark
  after a multi-record produce batch; the tests publish one record per request
  (``producer.batch.num.messages=1``), production Kafka needs nothing.
- CloudEvents: structured mode (JSON body, what ``publish`` writes) and the Kafka binding's
  binary mode (``ce_*`` headers, ``content-type``, data as the value) are both read; a binary one
  reaches the worker as the equivalent structured body.

librdkafka settings pass through the URL: ``consumer.X=V`` / ``producer.X=V`` (e.g.
``consumer.session.timeout.ms=6000``); defaults here: idempotent producer, manual commits,
``auto.offset.reset=earliest`` (a new group reads the whole topic), session timeout 10 s.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from headwater import cloudevents
from headwater.adapters._link import ReportsLink
from headwater.adapters._thread import OwnThread
from headwater.adapters.kafka_group import GroupMember, Journal
from headwater.errors import ConfigError, HeadwaterError, PermanentError, RetryableError
from headwater.models import BusMessage

log = logging.getLogger(__name__)


class _LibrdkafkaLog:
    """librdkafka's own log lines (a refused connection is an ERROR to it) at DEBUG: outages
    reach the user once, as RetryableError and the bus's ``lost``/``regained`` states."""

    def log(self, _level: int, msg: str, *args: object) -> None:
        log.debug(msg, *args)


LIBRDKAFKA_LOG = _LibrdkafkaLog()

REASON_HEADER = "headwater-reason"
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_GROUP = re.compile(r"[A-Za-z0-9_-]+")
_PARTITION = re.compile(r"(.+)\.p(\d+)")
_TIMEOUT = 10.0  # seconds for one admin request or a produce to be acknowledged
_PERMANENT = {
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError._INVALID_ARG,
}


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (the Java client's ``murmur2(key) & 0x7fffffff % n``;
    librdkafka's ``murmur2_random`` for keyed records)."""
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        (k,) = struct.unpack_from("<I", key, i * 4)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & ~3
    extra = length % 4
    if extra == 3:
        h ^= key[tail + 2] << 16
    if extra >= 2:
        h ^= key[tail + 1] << 8
    if extra >= 1:
        h ^= key[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def kafka_topic(topic: str) -> tuple[str, int | None]:
    """A headwater topic as (Kafka topic, partition or None for all of them)."""
    if not _TOPIC.fullmatch(topic):
        msg = f"bad topic {topic!r}: dot-separated words of letters, digits, '_' or '-'"
        raise ConfigError(msg)
    if (m := _PARTITION.fullmatch(topic)) is not None:
        return f"headwater.{m.group(1)}", int(m.group(2))
    return f"headwater.{topic}", None


def _group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        msg = f"bad consumer group {group!r}: letters, digits, '_' or '-' only"
        raise ConfigError(msg)
    return group


def as_bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def headers_of(record: Message) -> dict[str, bytes]:
    raw: Any = record.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {str(k): as_bytes(v) for k, v in pairs}


def structured_body(record: Message) -> bytes:
    """The record's CloudEvent in structured mode (binary-mode records are converted)."""
    value = as_bytes(record.value())
    if not record.headers():
        return value
    headers = headers_of(record)
    return cloudevents.from_binary(headers, value) if "ce_specversion" in headers else value


class KafkaBus(ReportsLink):
    """StreamBus on Kafka; see the module docstring for the mapping and the semantics."""

    def __init__(self, url: str, *, ack_wait_seconds: float | None = None) -> None:
        self.url = url
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.ack_wait = ack_wait_seconds or float(query.get("ack_wait", "30"))
        self.partitions = int(query.get("partitions", "1"))
        hosts = parts.netloc.rpartition("@")[2]
        self._where = f"kafka://{hosts}"
        base: dict[str, Any] = {"bootstrap.servers": hosts, "socket.connection.setup.timeout.ms": 5000}
        if "@" in parts.netloc:
            user, _, password = parts.netloc.rpartition("@")[0].partition(":")
            base |= {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                     "sasl.username": unquote(user), "sasl.password": unquote(password)}  # fmt: skip
        self._base = base
        self._producer_conf = {
            **base, "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 8000,
            "partitioner": "murmur2_random",
            **{k[9:]: v for k, v in query.items() if k.startswith("producer.")},
        }  # fmt: skip
        session_ms = int(query.get("consumer.session.timeout.ms", "10000"))
        self._consumer_conf = {
            **base, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": session_ms, "heartbeat.interval.ms": max(100, session_ms // 10),
            "partition.assignment.strategy": "cooperative-sticky",
            "max.poll.interval.ms": max(session_ms, int(self.ack_wait * 3000)),
            **{k[9:]: v for k, v in query.items() if k.startswith("consumer.")},
        }  # fmt: skip
        self._producer: Producer | None = None
        self._journal_producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._members: dict[tuple[str, str], GroupMember] = {}
        self._topics: dict[str, int] = {}  # Kafka topic → partitions, known to exist
        self._consume_thread = OwnThread("kafka-consume")
        self._produce_thread = OwnThread("kafka-produce")

    # -- connection and errors ---------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Vendor exceptions → RetryableError / PermanentError, naming the brokers, no credentials."""
        try:
            yield
        except HeadwaterError:
            raise
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and (error.code() in _PERMANENT or error.fatal()):
                raise PermanentError(self._say(f"{action} failed: {error.str()}")) from exc
            if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                self._topics.clear()  # the broker lost the topic: create it again
            detail = error.str() if error is not None else repr(exc)
            self._link("lost", f"{action} failed: {detail}")
            raise RetryableError(self._say(f"{action} failed: {detail}")) from exc
        except (BufferError, OSError, TimeoutError) as exc:
            self._link("lost", f"{action} failed: {exc!r}")
            raise RetryableError(self._say(f"{action} failed: {exc!r}")) from exc
        else:
            self._link("regained", action)

    def _say(self, what: str) -> str:
        return f"Kafka {self._where}: {what}"

    async def open(self) -> None:
        if self._admin is not None:
            return
        admin = AdminClient(self._base, logger=LIBRDKAFKA_LOG)
        with self._errors("connect"):
            await self._produce_thread.call(admin.list_topics, timeout=5)
        self._admin = admin
        self._producer = Producer(self._producer_conf, logger=LIBRDKAFKA_LOG)
        self._journal_producer = Producer(
            {**self._base, "linger.ms": 0, "message.timeout.ms": 8000}, logger=LIBRDKAFKA_LOG
        )

    async def close(self) -> None:
        members = list(self._members.values())
        self._members.clear()
        for member in members:
            with contextlib.suppress(Exception):
                await self._consume_thread.call(member.close)
        for producer in (self._producer, self._journal_producer):
            if producer is not None:
                with contextlib.suppress(Exception):
                    await self._produce_thread.call(producer.flush, 5)
        self._producer = self._journal_producer = self._admin = None
        self._topics.clear()
        self._consume_thread.shutdown()
        self._produce_thread.shutdown()

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            raise PermanentError(self._say("the bus is not open"))
        return self._admin

    # -- topics (sync, on a thread) ------------------------------------------------------------

    def _partition_count(self, name: str) -> int | None:
        if name in self._topics:
            return self._topics[name]
        # All topics: a metadata request naming a missing topic makes some brokers create it.
        meta = self._admin_client().list_topics(timeout=_TIMEOUT).topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        self._topics[name] = len(meta.partitions)
        return self._topics[name]

    def _ensure_topic(self, name: str, partitions: int | None = None, *, exact: bool = True) -> int:
        """The topic's partition count, creating it with ``partitions`` (else the bus's default);
        ``exact``: an existing topic with another count is a ConfigError."""
        found = self._partition_count(name)
        if found is None:
            future = self._admin_client().create_topics([NewTopic(name, partitions or self.partitions, 1)])[
                name
            ]
            try:
                future.result(timeout=_TIMEOUT)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            self._topics.pop(name, None)
            found = self._partition_count(name) or partitions or self.partitions
        if exact and partitions is not None and found != partitions:
            msg = f"topic {name} has {found} partitions, not {partitions}: keyed events would land elsewhere"
            raise ConfigError(self._say(msg))
        return found

    # -- publishing ----------------------------------------------------------------------------

    def partition_of(self, key: str | None, partitions: int) -> int:
        """Where Kafka's default partitioner puts ``key`` (no key: partition 0)."""
        return 0 if partitions == 1 or not key else murmur2_partition(key.encode(), partitions)

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        name, partition = kafka_topic(topic)
        await self._produce(name, None, [(None, partition or 0, b) for b in bodies], f"publish to {topic}")

    async def publish_keyed(
        self, topic: str, partitions: int, messages: Sequence[tuple[str | None, bytes]]
    ) -> None:
        """Keyed messages on a topic of ``partitions`` partitions (created if missing)."""
        name, _ = kafka_topic(topic)
        batch = [(k, self.partition_of(k, partitions), b) for k, b in messages]
        await self._produce(name, partitions, batch, f"publish to {topic}")

    async def _produce(
        self,
        name: str,
        partitions: int | None,
        batch: Sequence[tuple[str | None, int, bytes]],
        action: str,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        with self._errors(action):
            await self._produce_thread.call(self._produce_sync, name, partitions, batch, headers)

    def _produce_sync(
        self,
        name: str,
        partitions: int | None,
        batch: Sequence[tuple[str | None, int, bytes]],
        headers: list[tuple[str, str | bytes | None]] | None,
    ) -> None:
        """Produce in order, then wait until the broker acknowledged every record."""
        self._ensure_topic(name, partitions)
        producer = self._producer
        if producer is None:
            raise PermanentError(self._say("the bus is not open"))
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        for key, partition, body in batch:
            while True:
                try:
                    producer.produce(
                        name, bytes(body), key=key.encode() if key else None, partition=partition,
                        headers=headers, on_delivery=delivered,
                    )  # fmt: skip
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    producer.poll(0.1)
        left = producer.flush(_TIMEOUT)
        if errors or left:
            # A restarted broker may have lost the topic, or this producer's idempotence state:
            # the retry starts over with both checked afresh.
            self._topics.clear()
            producer.purge()
            self._producer = Producer(self._producer_conf, logger=LIBRDKAFKA_LOG)
            raise KafkaException(errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT))

    # -- consuming -----------------------------------------------------------------------------

    def _member(self, topic: str, group: str) -> GroupMember | None:
        member = self._members.get((topic, group))
        if member is not None:
            return member
        name, partition = kafka_topic(topic)
        if partition is None:
            count = self._ensure_topic(name)
        elif (count := self._partition_count(name) or 0) <= partition:
            return None  # nothing published to that partition yet: an idle poll
        assert self._journal_producer is not None
        journal = Journal(
            self._journal_producer,
            {**self._base, "group.id": "headwater-journal-reader", "enable.auto.commit": False},
            f"{name}.deliveries.{group}",
        )
        journal.ensure = lambda: self._ensure_journal(journal, count)
        member = GroupMember(
            topic=topic, kafka_topic=name, partition=partition,
            config={**self._consumer_conf, "group.id": group}, journal=journal,
            ack_wait=self.ack_wait, body_of=structured_body,
        )  # fmt: skip
        self._members[(topic, group)] = member
        return member

    def _ensure_journal(self, journal: Journal, partitions: int) -> None:
        if journal.journal_topic not in self._topics:
            self._ensure_topic(journal.journal_topic, partitions, exact=False)
        journal.ensure = lambda: None

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        group = _group(group)

        def run() -> list[BusMessage]:
            member = self._member(topic, group)
            return [] if member is None else member.consume(max_messages, timeout_seconds)

        with self._errors(f"consume {topic} as {group}"):
            return await self._consume_thread.call(run)

    @staticmethod
    def _by_member(messages: Sequence[BusMessage]) -> dict[int, tuple[GroupMember, list[Any]]]:
        out: dict[int, tuple[GroupMember, list[Any]]] = {}
        for message in messages:
            member = message.handle[2]
            out.setdefault(id(member), (member, []))[1].append(message.handle)
        return out

    async def ack(self, messages: Sequence[BusMessage]) -> None:
        if not messages:
            return
        with self._errors("ack"):
            for member, handles in self._by_member(messages).values():
                await self._consume_thread.call(member.ack, handles)

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        if not messages:
            return
        with self._errors("extend"):
            for member, handles in self._by_member(messages).values():
                await self._consume_thread.call(member.delay, handles, member.ack_wait)

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        if not messages:
            return
        with self._errors("nak"):
            for member, handles in self._by_member(messages).values():
                await self._consume_thread.call(member.delay, handles, delay_seconds)

    # -- dead letters and lag ------------------------------------------------------------------

    async def dead_letter(self, message: BusMessage, reason: str) -> None:
        name = f"headwater.{message.topic}.dlq"
        kafka_topic(message.topic)
        headers: list[tuple[str, str | bytes | None]] = [(REASON_HEADER, reason.encode())]
        await self._produce(name, None, [(None, 0, message.body)], f"dead-letter to {name}", headers)
        await self.ack([message])

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        name = f"headwater.{topic}.dlq"
        kafka_topic(topic)
        with self._errors(f"read {name}"):
            return await self._produce_thread.call(self._read_dlq, name, limit)

    def _read_dlq(self, name: str, limit: int) -> list[tuple[bytes, str]]:
        from confluent_kafka import Consumer

        if self._partition_count(name) is None:
            return []
        reader = Consumer({**self._base, "group.id": "headwater-dlq-reader", "enable.auto.commit": False,
                           "enable.partition.eof": True}, logger=LIBRDKAFKA_LOG)  # fmt: skip
        out: list[tuple[bytes, str]] = []
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(name, 0), timeout=_TIMEOUT)
            reader.assign([TopicPartition(name, 0, low)])
            while len(out) < limit and (record := reader.poll(_TIMEOUT)) is not None:
                error = record.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        break
                    raise KafkaException(error)
                reason = headers_of(record).get(REASON_HEADER, b"")
                out.append((as_bytes(record.value()), reason.decode(errors="replace")))
                if (record.offset() or 0) + 1 >= high:
                    break
        finally:
            reader.close()
        return out

    async def pending(self, topic: str, group: str) -> int:
        """Σ high watermark - committed offset (log start when none) over the topic's partitions."""
        name, only = kafka_topic(topic)
        group = _group(group)
        with self._errors(f"pending of {group} on {topic}"):
            return await self._produce_thread.call(self._pending_sync, name, only, group)

    def _pending_sync(self, name: str, only: int | None, group: str) -> int:
        self._topics.pop(name, None)
        count = self._partition_count(name)
        if count is None:
            return 0
        admin = self._admin_client()
        tps = [TopicPartition(name, p) for p in range(count) if only is None or p == only]
        request = [ConsumerGroupTopicPartitions(group, tps)]
        committed = {
            tp.partition: tp.offset
            for tp in admin.list_consumer_group_offsets(request)[group]
            .result(timeout=_TIMEOUT)
            .topic_partitions
        }
        ends = _offsets(admin, tps, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        starts = _offsets(admin, tps, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        total = 0
        for tp in tps:
            done = committed.get(tp.partition, -1)
            total += max(ends[tp.partition] - (done if done >= 0 else starts[tp.partition]), 0)
        return total


def _offsets(admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec) -> dict[int, int]:
    futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=_TIMEOUT)
    return {tp.partition: future.result(timeout=_TIMEOUT).offset for tp, future in futures.items()}
