"""The bus: publish, consume in groups, dead letters per topic, consumer lag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from headwater.models import (
    BusMessage,
)
from headwater.ports.lifecycle import Lifecycle


@runtime_checkable
class BusPublisher(Lifecycle, Protocol):
    """Writes CloudEvents to a topic of the bus.

    ``publish`` returns once the bus has stored the messages durably, in the given order; it is
    not idempotent (a retried publish may store a message twice: consumers are at-least-once and
    sinks are idempotent). Topic names are dot-separated words (``docs``, ``signals.sensors``);
    adapters map them to subjects/streams/keys under a ``headwater`` prefix."""

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None: ...


@runtime_checkable
class KeyedPublisher(Protocol):
    """A bus whose topics have partitions of their own (Kafka): ``publish_keyed`` writes each
    message with its key to the partition the bus's own partitioner gives that key
    (``partition_of``), on a topic of exactly ``partitions`` partitions (created if missing), so
    any producer keyed the same way lands in the same partition. Partition ``i`` is consumed as
    topic ``<topic>.p<i>``."""

    def partition_of(self, key: str | None, partitions: int) -> int: ...

    async def publish_keyed(
        self, topic: str, partitions: int, messages: Sequence[tuple[str | None, bytes]]
    ) -> None: ...


@runtime_checkable
class BusConsumer(Lifecycle, Protocol):
    """Reads a topic in a consumer group: at-least-once, acked explicitly.

    ``consume`` gives each message to one consumer of a group; messages of a topic arrive in
    ``position`` order on first delivery. A message not acked within ``ack_wait_seconds``
    (worker killed, hung) is delivered again, to this or another consumer of the group, with
    ``deliveries`` + 1; the adapter never drops it by itself (no MaxDeliver discard: the worker
    decides when to dead-letter, because only it knows whether a sink committed). ``ack`` only
    after the sink committed; ack, nak and extend are idempotent.
    """

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_seconds`` for the first (empty: idle)."""
        ...

    async def ack(self, messages: Sequence[BusMessage]) -> None: ...

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        """Still working on these: restart their ack wait, so a batch that takes longer than the
        ack wait is not handed to a second consumer while the first still processes it."""
        ...

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        """Deliver these again after ``delay_seconds`` (with ``deliveries`` + 1)."""
        ...


@runtime_checkable
class BusDeadLetters(Protocol):
    """The bus's own dead letters, per topic (``<topic>.dlq``).

    ``dead_letter`` stores the message with the reason durably, then acks it (so a crash between
    the two leaves a redelivery, never a lost message); ``dead_letters`` reads them oldest first."""

    async def dead_letter(self, message: BusMessage, reason: str) -> None: ...

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """What ``dead_letter`` stored for ``topic``: (body, reason), oldest first."""
        ...


@runtime_checkable
class ConsumerLag(Protocol):
    """How far a consumer group is behind: a read, no side effects, an estimate while others
    publish and ack."""

    async def pending(self, topic: str, group: str) -> int:
        """Messages published but not yet acked by ``group`` (consumer lag)."""
        ...


@runtime_checkable
class StreamBus(BusPublisher, BusConsumer, BusDeadLetters, ConsumerLag, Protocol):
    """A durable log of CloudEvents with consumer groups (tests/contract/test_stream_bus.py):
    the four ports above on one connection, ``url`` naming it (without credentials)."""

    url: str
