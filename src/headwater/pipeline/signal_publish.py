"""``headwater publish signals``: signal inputs → CloudEvents on a bus, batched and partitioned.

The inputs are what ``ingest signals`` takes — a file or a folder of JSONL, CSV and Parquet
files, listed by the same function in the same order — so publishing a folder and ingesting it
see the same events in the same order. Each record becomes one CloudEvent (a JSONL line that
already is one passes as it is; a CSV row or Parquet row becomes the JSON object of its columns)
with a deterministic id (file, line or row number, bytes), so publishing twice is a redelivery
that the worker's CloudEvent dedup discards. Two knobs, both for scale:
- ``per_message`` > 1 packs consecutive events into one message in the CloudEvents JSON batch
  format (a JSON array): one bus append and one ack per N events instead of N (fewer when
  the events are large: a message stays under ``MAX_MESSAGE_BYTES``).
- ``partitions`` > 1 routes every event by a consistent hash of its ``entity_id`` (CRC-32, the
  same on every machine and run) to ``<topic>.p<i>``, one signal worker per partition topic: an
  entity's events stay on one partition, in order, so each worker holds whole entities.
  A bus with partitions of its own (``KeyedPublisher``: Kafka) gets one topic of N partitions
  instead, each message keyed by its (first) event's ``entity_id`` and placed by the bus's
  partitioner (Kafka's default, murmur2); its partition i is still read as ``<topic>.p<i>``.
"""

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from headwater import cloudevents
from headwater.models import sha256_hex
from headwater.pipeline.signal_inputs import InputFile, list_inputs
from headwater.ports import BusPublisher, KeyedPublisher

SIGNALS_TOPIC = "signals"
MAX_MESSAGE_BYTES = 256 * 1024  # a batch message closes early at this size (NATS refuses > 1 MiB)


def partition_of(entity_id: str | None, partitions: int) -> int:
    """Lines without an entity (malformed: the worker dead-letters them) go to partition 0."""
    if partitions == 1 or not entity_id:
        return 0
    return zlib.crc32(entity_id.encode()) % partitions


def partition_topic(topic: str, partition: int, partitions: int) -> str:
    return topic if partitions == 1 else f"{topic}.p{partition}"


Partitioner = Callable[[str | None, int], int]
Keyed = tuple[str | None, bytes]  # (the entity of the message's first event, the message)


def partitioned_messages(
    path: Path, *, per_message: int = 1, partitions: int = 1, batch: int = 1000
) -> Iterator[tuple[int, list[bytes], int]]:
    """(partition, up to ``batch`` messages, the events in them) in file order per partition."""
    for p, keyed, count in keyed_messages(path, per_message=per_message, partitions=partitions, batch=batch):
        yield p, [body for _, body in keyed], count


def keyed_messages(
    path: Path,
    *,
    per_message: int = 1,
    partitions: int = 1,
    batch: int = 1000,
    partitioner: Partitioner = partition_of,
) -> Iterator[tuple[int, list[Keyed], int]]:
    """``partitioned_messages`` with each message's key: the entity of its first event (every
    event of a message has the same partition, so the key places the whole message)."""
    events: list[list[bytes]] = [[] for _ in range(partitions)]  # not yet in a message
    keys: list[str | None] = [None] * partitions
    sizes = [0] * partitions
    messages: list[list[Keyed]] = [[] for _ in range(partitions)]  # not yet handed out
    counts = [0] * partitions  # events in those messages
    for entity_id, event in _cloudevents(path):
        p = partitioner(entity_id, partitions)
        if not events[p]:
            keys[p] = entity_id
        events[p].append(event)
        sizes[p] += len(event) + 1
        if len(events[p]) == per_message or sizes[p] >= MAX_MESSAGE_BYTES:
            messages[p].append((keys[p], _pack(events[p], per_message)))
            counts[p] += len(events[p])
            events[p], sizes[p] = [], 0
            if len(messages[p]) >= batch:
                yield p, messages[p], counts[p]
                messages[p], counts[p] = [], 0
    for p in range(partitions):
        if events[p]:
            messages[p].append((keys[p], _pack(events[p], per_message)))
            counts[p] += len(events[p])
        if messages[p]:
            yield p, messages[p], counts[p]


def signal_messages(path: Path, batch: int = 1000, per_message: int = 1) -> Iterator[list[bytes]]:
    """One topic's messages, in lists of ``batch``."""
    for _, bodies, _ in partitioned_messages(path, per_message=per_message, batch=batch):
        yield bodies


async def publish_signals(
    bus: BusPublisher, path: Path, topic: str = SIGNALS_TOPIC, *, per_message: int = 1, partitions: int = 1
) -> tuple[int, int]:
    """Returns (messages, events) published over all partitions."""
    await bus.open()
    messages = events = 0
    try:
        batches = keyed_messages(
            path,
            per_message=per_message,
            partitions=partitions,
            batch=max(1, 1000 // per_message),
            partitioner=bus.partition_of if isinstance(bus, KeyedPublisher) else partition_of,
        )
        for partition, bodies, count in batches:
            if isinstance(bus, KeyedPublisher):
                await bus.publish_keyed(topic, partitions, bodies)
            else:
                await bus.publish(partition_topic(topic, partition, partitions), [b for _, b in bodies])
            messages += len(bodies)
            events += count
    finally:
        await bus.close()
    return messages, events


def _pack(events: list[bytes], per_message: int) -> bytes:
    return events[0] if per_message == 1 else cloudevents.encode_batch(events)


def _cloudevents(path: Path) -> Iterator[tuple[str | None, bytes]]:
    for file in list_inputs(path):
        source = f"headwater.publish:{file.relpath}"
        for number, record in _records(file):
            yield _as_cloudevent(record, source, number)


def _records(file: InputFile) -> Iterator[tuple[int, bytes]]:
    """(line or row number, the record as JSON) in file order; blank lines are skipped."""
    if file.kind == "parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(file.path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                yield number, msgspec.json.encode(_envelope({k: _arrow_value(v) for k, v in row.items()}))
                number += 1
        return
    with file.path.open("rb") as handle:
        if file.kind == "jsonl":
            for number, raw in enumerate(handle, start=1):
                if line := raw.strip():
                    yield number, line
            return
        header = [h.strip() for h in handle.readline().decode("utf-8", "replace").rstrip("\r\n").split(",")]
        for number, raw in enumerate(handle, start=2):
            if line := raw.strip():
                yield number, _csv_object(header, line)


_CSV_TEXT = ("entity_id", "source", "trace_id")
_CSV_NUMBERS = ("event_time", "sequence")


def _csv_object(header: list[str], line: bytes) -> bytes:
    """A CSV row as the JSON object ingest would decode it to: the envelope columns at the top,
    every other column a payload field (an empty cell is an absent field); digits are integers,
    decimals floats, other text stays text (whether a field is numeric is the feature set's to
    say, and the publisher knows none). A row that does not fit its header stays the raw line,
    so the worker dead-letters it with the line in view."""
    text = line.decode("utf-8", "replace")
    cells = next(csv.reader([text]), [])
    if len(cells) != len(header):
        return msgspec.json.encode(text)  # not an object: the worker rejects it and keeps it
    row = dict(zip(header, cells, strict=True))
    obj: dict[str, Any] = {k: v for k, v in row.items() if k in _CSV_TEXT}
    for name in _CSV_NUMBERS:
        if (cell := row.get(name, "").strip()) != "":
            obj[name] = _csv_number(cell)
    payload = {k: _csv_field(v) for k, v in row.items() if k not in _CSV_TEXT and k not in _CSV_NUMBERS and v}
    return msgspec.json.encode(_envelope({**obj, **payload}))


def _envelope(row: dict[str, Any]) -> dict[str, Any]:
    """A flat row (CSV, Parquet) as a signal: the envelope columns at the top, the others under
    ``payload`` (absent when null). The one-field layout stays flat: the same bytes (and event
    ids) as before payloads had several fields."""
    top = {k: v for k, v in row.items() if k in _CSV_TEXT or k in _CSV_NUMBERS}
    payload = {k: v for k, v in row.items() if k not in top and v is not None}
    if list(payload) == ["value"]:
        return {**top, "value": payload["value"]}
    return {**top, "payload": payload} if payload else top


def _csv_field(cell: str) -> int | float | str:
    """A number if the cell is one, else the cell as it is (spaces kept, as ingest keeps them)."""
    number = _csv_number(cell.strip())
    return cell if isinstance(number, str) else number


def _csv_number(cell: str) -> int | float | str:
    if cell.lstrip("-").isdigit():
        return int(cell)
    try:
        number = float(cell)
    except ValueError:
        return cell
    return number if math.isfinite(number) else cell


def _arrow_value(value: Any) -> Any:
    """Arrow timestamps become epoch milliseconds (naive ones are UTC, as ingest reads them)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return round(aware.timestamp() * 1000)
    return value


def _as_cloudevent(line: bytes, source: str, number: int) -> tuple[str | None, bytes]:
    """(entity_id if the line has one, the CloudEvent)."""
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        value = None
        data = msgspec.json.encode(line.decode("utf-8", "replace"))  # kept, so the DLQ shows it
    else:
        if isinstance(value, dict) and "specversion" in value:
            return _entity(value.get("data")), line
        data = line
    event_id = sha256_hex(b"%d\x00" % number + line)[:32]
    body = cloudevents.make_event(id=event_id, source=source, type=cloudevents.SIGNAL, data=data)
    return _entity(value), body


def _entity(value: object) -> str | None:
    entity = value.get("entity_id") if isinstance(value, dict) else None
    return entity if isinstance(entity, str) else None
