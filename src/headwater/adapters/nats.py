"""NATS JetStream StreamBus (``nats://[user:pass@]host:port?ack_wait=SECONDS``), extra ``nats``.

Mapping: topic ``docs.in`` → file-storage stream ``HEADWATER_DOCS_IN`` on subject
``headwater.docs.in`` (limits retention: every group reads every message, an ack deletes
nothing); group → durable pull consumer (explicit ack, AckWait = ack wait, MaxDeliver unlimited,
MaxAckPending bounded); dead letters → stream ``HEADWATER_DOCS_IN_DLQ`` on ``headwater.docs.in.dlq``
with the reason in the ``Headwater-Reason`` header. Streams and consumers are created on first
use, idempotently (the consumer is created-or-updated, so a changed ack wait applies).

Delivery semantics and the pitfalls handled (research/reliability-ecosystem.md §A3):
- At least once. ``deliveries`` is the server's ``num_delivered``; ``position`` the stream sequence.
- MaxDeliver is unlimited on purpose: at MaxDeliver JetStream just stops delivering and leaves the
  message in the stream (nats-server #5564, #4956), a silent loss for the group. The worker
  dead-letters instead, because only it knows whether its sink committed.
- Acks wait for the server's confirmation (``ack_sync``): ``pending`` right after ``ack`` is exact,
  and a lost ack is a RetryableError, not a silent redelivery. The server still accepts a late ack
  from a consumer whose ack wait expired (#4786): sinks must dedup, as everywhere.
- No ``Nats-Msg-Id``: identical bodies are distinct messages. A publish retried after a lost
  PubAck may therefore store a message twice (at least once, again).
- nats-py loops forever inside ``connect()`` when reconnects are unlimited, so the first connect
  gets a few attempts and fails as RetryableError; after that the client reconnects forever.
  While it is disconnected every call fails fast with RetryableError (nothing is buffered to be
  sent twice later); a fetch that times out while connected is just an idle poll: ``[]``.
- JetStream fsyncs every 2 minutes by default (Jepsen 2025): run production servers with
  ``sync_interval: always`` if a host crash must not lose acknowledged publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from headwater.errors import ConfigError, HeadwaterError, PermanentError, RetryableError
from headwater.models import BusMessage
from headwater.ports import StateListener

log = logging.getLogger(__name__)

REASON_HEADER = "Headwater-Reason"
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_GROUP = re.compile(r"[A-Za-z0-9_-]+")
_MAX_ACK_PENDING = 10_000  # per group: a stalled group stops at this many unacked messages
_REQUEST_TIMEOUT = 5.0  # seconds for one JetStream API request, publish ack or ack confirmation
_PUBLISH_WINDOW = 1_000  # publishes in flight before waiting for their acks
_CONNECT_ATTEMPTS = 3
_RECONNECT_WAIT = 0.5
# Printable ASCII except "%" stays readable in the reason header; the rest is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio.TimeoutError and every nats TimeoutError (fetch, flush, request)
    OSError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.errors.SlowConsumerError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.TooManyStalledMsgsError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


def _stream_and_subject(topic: str) -> tuple[str, str]:
    if not _TOPIC.fullmatch(topic) or topic.rsplit(".", 1)[-1] == "dlq":
        msg = f"bad topic {topic!r}: dot-separated words of letters, digits, '_' or '-', not ending in .dlq"
        raise ConfigError(msg)
    return f"HEADWATER_{topic.upper().replace('.', '_')}", f"headwater.{topic}"


def _dlq_stream_and_subject(topic: str) -> tuple[str, str]:
    stream, subject = _stream_and_subject(topic)
    return f"{stream}_DLQ", f"{subject}.dlq"


def _consumer_name(group: str) -> str:
    if not _GROUP.fullmatch(group):
        msg = f"bad consumer group {group!r}: letters, digits, '_' or '-' only"
        raise ConfigError(msg)
    return group


def _encode_reason(reason: str) -> str:
    """Header values are one line and lose outer spaces: percent-encode what would not survive."""
    encoded = quote(reason, safe=_HEADER_SAFE)
    return re.sub(r"^ +| +$", lambda m: "%20" * len(m.group()), encoded)


def _decode_reason(headers: dict[str, Any] | None) -> str:
    return unquote(str((headers or {}).get(REASON_HEADER, "")))


class NatsBus:
    """StreamBus on NATS JetStream; see the module docstring for the mapping and the semantics."""

    def __init__(self, url: str, *, ack_wait_seconds: float | None = None) -> None:
        self.url = url
        parts = urlsplit(url)
        self.ack_wait = ack_wait_seconds or float(parse_qs(parts.query).get("ack_wait", ["30"])[0])
        self._server = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self._where = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))
        self._listener: StateListener | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams: set[str] = set()
        self._subs: dict[tuple[str, str], _Puller] = {}

    # -- connection and errors ---------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Vendor exceptions → RetryableError / PermanentError, naming the URL without credentials."""
        try:
            yield
        except HeadwaterError:
            raise
        except _RETRYABLE as exc:
            raise RetryableError(self._say(f"{action} failed: {exc!r}")) from exc
        except nats.errors.Error as exc:
            raise PermanentError(self._say(f"{action} failed: {exc!r}")) from exc

    def _say(self, what: str) -> str:
        return f"NATS {self._where}: {what}"

    async def open(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            return
        with self._errors("connect"):
            nc = await nats.connect(
                servers=[self._server],
                name="headwater",
                connect_timeout=5,
                max_reconnect_attempts=_CONNECT_ATTEMPTS,
                reconnect_time_wait=_RECONNECT_WAIT,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, reconnect forever
        self._nc, self._js = nc, nc.jetstream(timeout=_REQUEST_TIMEOUT)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS %s: %r", self._where, exc)

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not our own close()
            log.warning("NATS %s: disconnected, reconnecting", self._where)
            if self._listener is not None:
                self._listener(self._where, "lost", "disconnected, reconnecting")

    async def _on_reconnected(self) -> None:
        log.warning("NATS %s: reconnected", self._where)
        if self._listener is not None:
            self._listener(self._where, "regained", "reconnected")

    def watch_state(self, listener: StateListener | None) -> None:
        """The client's own disconnect and reconnect callbacks: ``lost``, ``regained``."""
        self._listener = listener

    async def close(self) -> None:
        # close(), not drain(): drain with a live pull subscription raises DrainTimeoutError.
        nc, self._nc, self._js = self._nc, None, None
        self._streams.clear()
        pullers = list(self._subs.values())
        self._subs.clear()
        for puller in pullers:
            await puller.close()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def _jetstream(self) -> JetStreamContext:
        """The JetStream context, or RetryableError at once while the client is reconnecting."""
        if self._nc is None or self._js is None:
            raise PermanentError(self._say("the bus is not open"))
        if not self._nc.is_connected:
            raise RetryableError(self._say("disconnected, reconnecting"))
        return self._js

    # -- streams and consumers ---------------------------------------------------------------

    async def _ensure_stream(self, stream: str, subject: str) -> None:
        if stream in self._streams:
            return
        js = self._jetstream()
        with self._errors(f"create stream {stream}"):
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                info = await js.add_stream(
                    StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE),
                    retention=RetentionPolicy.LIMITS,
                )
        if subject not in (info.config.subjects or []):
            clash = f"stream {stream} exists without subject {subject} (two topics with one stream name?)"
            raise PermanentError(self._say(clash))
        self._streams.add(stream)

    async def _subscription(self, topic: str, group: str) -> _Puller:
        sub = self._subs.get((topic, group))
        if sub is not None:
            return sub
        stream, subject = _stream_and_subject(topic)
        durable = _consumer_name(group)
        await self._ensure_stream(stream, subject)
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=_MAX_ACK_PENDING,
            filter_subject=subject,
        )
        js = self._jetstream()
        with self._errors(f"create consumer {durable} on {stream}"):
            await js.add_consumer(stream, config)  # create, or update to this config
            assert self._nc is not None
            sub = await _Puller.start(self._nc, stream, durable)
        self._subs[(topic, group)] = sub
        return sub

    # -- the port ------------------------------------------------------------------------------

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        stream, subject = _stream_and_subject(topic)
        await self._ensure_stream(stream, subject)
        js = self._jetstream()
        with self._errors(f"publish to {topic}"):
            try:
                for start in range(0, len(bodies), _PUBLISH_WINDOW):
                    await self._publish_window(js, stream, subject, bodies[start : start + _PUBLISH_WINDOW])
            except nats.js.errors.NoStreamResponseError:
                self._streams.discard(stream)  # the server lost the stream: recreate it on the retry
                raise

    @staticmethod
    async def _publish_window(
        js: JetStreamContext, stream: str, subject: str, bodies: Sequence[bytes]
    ) -> None:
        """Send in order on the one connection (the stream stores them in that order), then wait
        for every PubAck; unanswered publishes are cancelled so nats-py frees their slots."""
        futures: list[asyncio.Future[Any]] = []
        try:
            # No ``stream=``: it adds a Nats-Expected-Stream header to every stored message, and
            # parsing headers was a fifth of a consumer's time; _ensure_stream checked the mapping.
            for body in bodies:  # one at a time, so the send order is the stored order
                future = await js.publish_async(subject, bytes(body), wait_stall=5)
                futures.append(future)  # appended one by one: a partial list is still cancelled
            async with asyncio.timeout(_REQUEST_TIMEOUT + len(bodies) / 1000):
                await asyncio.gather(*futures)
        finally:
            for future in futures:
                future.cancel()

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        sub = await self._subscription(topic, group)
        try:
            msgs = await sub.fetch(max_messages, max(timeout_seconds, 0.01))
        except _PullFailed as exc:  # the consumer is gone (server lost it): create it again
            self._subs.pop((topic, group), None)
            await sub.close()
            raise RetryableError(self._say(f"consume {topic} as {group}: {exc}")) from exc
        if not msgs:
            self._jetstream()  # nothing while disconnected is an outage, not an idle topic
        return [self._message(topic, msg) for msg in msgs]

    @staticmethod
    def _message(topic: str, msg: Msg) -> BusMessage:
        meta = msg.metadata
        return BusMessage(
            topic=topic, body=msg.data, position=(meta.sequence.stream, 0),
            deliveries=meta.num_delivered, handle=msg,
        )  # fmt: skip

    async def ack(self, messages: Sequence[BusMessage]) -> None:
        if not messages:
            return
        self._jetstream()
        assert self._nc is not None
        with self._errors("ack"):
            # Fire-and-forget acks (one request with a reply each is ~10x slower), the last one
            # confirmed: the consumer handles one connection's acks in order, so when its reply
            # comes every ack of the batch is applied (``pending`` is exact on return).
            for message in messages[:-1]:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await message.handle.ack()
            await self._ack_one(messages[-1].handle)

    @staticmethod
    async def _ack_one(msg: Msg) -> None:
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):  # acking twice is a no-op
            await msg.ack_sync(timeout=_REQUEST_TIMEOUT)

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        """``+WPI`` (work in progress): the server restarts the message's ack wait."""
        if not messages:
            return
        self._jetstream()
        with self._errors("extend"):
            for message in messages:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await message.handle.in_progress()

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        if not messages:
            return
        self._jetstream()
        assert self._nc is not None
        with self._errors("nak"):
            for message in messages:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await message.handle.nak(delay=delay_seconds)
            await self._nc.flush(timeout=int(_REQUEST_TIMEOUT))  # the server has them when we return

    async def dead_letter(self, message: BusMessage, reason: str) -> None:
        stream, subject = _dlq_stream_and_subject(message.topic)
        await self._ensure_stream(stream, subject)
        js = self._jetstream()
        with self._errors(f"dead-letter to {subject}"):
            headers = {REASON_HEADER: _encode_reason(reason)}
            await js.publish(subject, message.body, stream=stream, headers=headers)
        await self.ack([message])

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """Read the DLQ stream by sequence (one message-get request per entry), consuming nothing."""
        stream, subject = _dlq_stream_and_subject(topic)
        js = self._jetstream()
        out: list[tuple[bytes, str]] = []
        seq = 1
        with self._errors(f"read {subject}"):
            while len(out) < limit:
                try:
                    raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
                except nats.js.errors.NotFoundError:  # past the end, or no dead letters yet
                    break
                out.append((raw.data or b"", _decode_reason(raw.headers)))
                seq = (raw.seq or seq) + 1
        return out

    async def pending(self, topic: str, group: str) -> int:
        """Not yet delivered to the group plus delivered but unacked; a new group: the whole stream.

        Undelivered is the stream's last sequence minus the consumer's delivered one, not the
        consumer's ``num_pending``: the server updates that one asynchronously after a store, so
        right after a publish it can still read 0 (seen under load). One topic is one stream and
        messages are never deleted from it, so the difference counts messages exactly."""
        stream, _ = _stream_and_subject(topic)
        js = self._jetstream()
        with self._errors(f"pending of {group} on {topic}"):
            try:
                info = await js.consumer_info(stream, _consumer_name(group))
                last = (await js.stream_info(stream)).state.last_seq or 0
                delivered = info.delivered.stream_seq if info.delivered else 0
                return max(last - (delivered or 0), 0) + (info.num_ack_pending or 0)
            except nats.js.errors.NotFoundError:
                pass
            try:
                return int((await js.stream_info(stream)).state.messages)
            except nats.js.errors.NotFoundError:
                return 0


class _PullFailed(Exception):
    """The server answered a pull request with an error status (e.g. 503: no such consumer)."""


class _Puller:
    """Reads a durable pull consumer in batches without nats-py's ``fetch``, which awaits every
    message with a task and a timeout of its own (half the cost of consuming, measured): one
    callback subscription on an inbox, one pull request per batch, which ends when the batch is
    full or with the server's status for that request (404 nothing now, 408 expired, 409).

    Messages that arrive after their request ended (rare: the server stops at expiry) are still
    valid deliveries: they wait in the buffer for the next fetch.
    """

    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.buffer: list[Msg] = []
        self.wanted = 0
        self.request = ""
        self.requests = 0
        self.failure: str | None = None
        self.done = asyncio.Event()
        self.sub: Any = None

    @classmethod
    async def start(cls, nc: Client, stream: str, durable: str) -> _Puller:
        puller = cls(nc, stream, durable)
        puller.sub = await nc.subscribe(f"{puller.inbox}.*", cb=puller._on_msg)
        return puller

    async def close(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):  # a connection closing anyway
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.buffer.append(msg)
            if len(self.buffer) >= self.wanted:
                self.done.set()
        elif msg.subject == self.request and status != "100":  # 100: an idle heartbeat
            if status not in ("404", "408", "409"):
                self.failure = f"{status} {msg.headers.get('Description', '') if msg.headers else ''}"
            self.done.set()

    async def fetch(self, batch: int, expires_seconds: float) -> list[Msg]:
        if len(self.buffer) < batch:
            self.requests += 1
            self.request, self.wanted, self.failure = f"{self.inbox}.{self.requests}", batch, None
            self.done.clear()
            pull = {"batch": batch - len(self.buffer), "expires": int(expires_seconds * 1e9)}
            await self.nc.publish(self.next_subject, json.dumps(pull).encode(), reply=self.request)
            with contextlib.suppress(TimeoutError):  # lost on a disconnect: the caller checks
                async with asyncio.timeout(expires_seconds + _REQUEST_TIMEOUT):
                    await self.done.wait()
            self.request = ""
            if self.failure is not None:
                raise _PullFailed(self.failure)
        taken, self.buffer = self.buffer[:batch], self.buffer[batch:]
        return taken
