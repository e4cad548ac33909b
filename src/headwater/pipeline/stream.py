"""Stream workers: the same pipelines, fed by a bus instead of a folder (DESIGN §1).

At-least-once in, effectively-once out (DESIGN §4.4): a batch of messages goes to a sink, the
sink commits its effects (upserts keyed by doc_id or feature key, plus its checkpoint), and only
then are the messages acked. A message whose effects were committed but whose ack was lost comes
back and changes nothing. A message is dead-lettered — metadata DLQ with its body, and the bus's
DLQ — when it is malformed, or once it was delivered ``max_attempts`` times without completing
(it crashed or hung a worker, or kept failing): it never loops.

Batches are strictly sequential: a key is never processed by two batches at once, and the bound
on in-flight messages (one batch) is what lets a slow sink slow consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from headwater import cloudevents
from headwater.cloudevents import CloudEvent
from headwater.errors import InputError, RetryableError
from headwater.events import Event, MessageDeadLettered, WorkerBatch, WorkerStopped
from headwater.models import BusMessage, DeadLetter
from headwater.observability import redact, span
from headwater.pipeline.adapter_states import AdapterStates
from headwater.pipeline.retry import RetryPolicy, with_retries
from headwater.ports import DeadLetterSink, SettingsStore, StreamBus
from headwater.redaction import redact_url as redact_url  # noqa: PLC0414 (cli.py imports it from here)


@dataclass(frozen=True)
class RejectedEvent:
    """One bad event inside a batch message (CloudEvents JSON batch format): dead-lettered alone,
    with its own body, while the message and its good events are committed and acked."""

    index: int
    body: bytes
    error: InputError


@dataclass
class Delivery:
    """A message on its way through a sink. The sink sets ``error`` to dead-letter this message
    alone (bad input), ``rejected`` for bad events inside a batch message, ``done`` when its
    effects were already committed (a redelivery), or ``deferred`` to get it back, unacked, with
    the next batch (it must wait for older ones)."""

    message: BusMessage
    event: CloudEvent | None = None
    error: Exception | None = None
    stage: str = "decode"
    done: bool = False
    deferred: bool = False
    rejected: list[RejectedEvent] = field(default_factory=list)


class Sink(Protocol):
    """Where a worker's messages go: commits a batch durably before returning."""

    async def open(self) -> None: ...

    async def handle(self, batch: list[Delivery]) -> list[Event]:
        """Commit the effects of every delivery without ``error``; raise to fail the whole batch."""
        ...

    async def idle(self, *, final: bool) -> list[Event]:
        """No message for a while (``final``: the worker is about to stop)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    topic: str
    group: str
    batch_size: int = 256
    max_attempts: int = 3
    poll_seconds: float = 0.5
    idle_timeout_seconds: float | None = None
    exit_when_idle_seconds: float | None = None
    drain_seconds: float = 30.0
    ack_wait_seconds: float = 30.0  # the bus's: in-flight messages are extended every third of it
    decode_envelopes: bool = True
    """False when the sink reads the CloudEvents itself (signals: the record decoder validates
    the envelope and the data in one pass, so decoding here would double the per-event cost)."""
    ordered: bool = False
    """True for sinks that need delivery order (signals): a failed batch stops the worker and
    its messages come back, in order, to the next one; nothing is nak'ed or taken apart."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)


LAG_SAMPLE_SECONDS = 1.0


@dataclass
class _Counts:
    batches: int = 0
    acked: int = 0
    dead: int = 0


class StreamWorker:
    def __init__(
        self,
        bus: StreamBus,
        sink: Sink,
        dead_letters: DeadLetterSink,
        options: WorkerOptions,
        *,
        attempts: SettingsStore | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.bus = bus
        self.sink = sink
        self.dead_letters = dead_letters
        self.attempts = attempts
        self.options = options
        self.stop = stop or asyncio.Event()
        self.counts = _Counts()
        self._lag: int | None = None  # messages the group has not acked yet, sampled
        self._lag_at = -LAG_SAMPLE_SECONDS
        self.held: list[BusMessage] = []  # deferred by the sink: offered again with the next batch
        self._backoff = options.retry.initial_seconds  # the next wait for a bus that is down

    async def stream_events(self) -> AsyncIterator[Event]:  # noqa: PLR0912 - one loop, read top to bottom
        o = self.options
        started = time.monotonic()
        reason = "signal"
        states = AdapterStates()
        states.watch(self.bus, "bus")
        await self.bus.open()
        await self.sink.open()
        try:
            idle_since, idle_done = time.monotonic(), False
            while not self.stop.is_set():
                for change in states.take():
                    yield change
                messages = await self._consume()
                if messages is None:  # the bus is down (waited for with backoff): not idle time
                    idle_since = time.monotonic()
                    continue
                if not messages:
                    idle = time.monotonic() - idle_since
                    if o.exit_when_idle_seconds is not None and idle >= o.exit_when_idle_seconds:
                        reason = "idle"
                        break
                    timeout = o.idle_timeout_seconds
                    if timeout is not None and idle >= timeout and not idle_done:
                        idle_done = True
                        for event in await self.sink.idle(final=False):
                            yield event
                    continue
                idle_since, idle_done = time.monotonic(), False
                async for event in self._dispatch(messages):
                    yield event
            if reason == "idle":  # the end of the input (--exit-when-idle): close what is open
                for event in await self.sink.idle(final=True):
                    yield event
            # Stopped by a signal (a deploy, a rescale): open windows stay open, in the
            # checkpoint, so the next worker continues as if nothing happened.
        except BaseException:
            reason = "error"
            raise
        finally:
            states.close()
            await self.sink.close()
            await self.bus.close()
        for change in states.take():
            yield change
        c = self.counts
        yield WorkerStopped(
            topic=o.topic,
            reason=reason,
            batches=c.batches,
            messages_acked=c.acked,
            messages_dead_lettered=c.dead,
            elapsed_seconds=round(time.monotonic() - started, 3),
        )

    async def _consume(self) -> list[BusMessage] | None:
        """One poll; None when the bus is down (restarting), after a backoff that a stop request
        cuts short: the caller reports the bus's state changes between polls."""
        try:
            got = await self.bus.consume(
                self.options.topic,
                self.options.group,
                # Full batches even while holding: redeliveries (what the sink waits for) come
                # first on both buses, and a claim of one at a time would be slower than the
                # ack wait. Held messages are bounded by what arrives within one ack wait.
                max_messages=self.options.batch_size,
                timeout_seconds=self.options.poll_seconds if not self.held else 0.05,
            )
        except RetryableError:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._backoff):
                    await self.stop.wait()
            self._backoff = min(self._backoff * 2, self.options.retry.max_seconds)
            return None
        self._backoff = self.options.retry.initial_seconds
        return self._with_held(got)

    def _with_held(self, got: list[BusMessage]) -> list[BusMessage]:
        """Held messages first; a held one that the bus redelivered meanwhile keeps its newest
        delivery (whose receipt is the valid one)."""
        if not self.held:
            return got
        newest = {m.position: m for m in [*self.held, *got]}
        self.held = []
        return sorted(newest.values(), key=lambda m: m.position)

    async def _dispatch(self, messages: list[BusMessage]) -> AsyncIterator[Event]:
        """First deliveries go as one batch. Redelivered ones are suspects (they were in flight
        when a worker died): each goes alone, its attempt recorded durably just before, so only
        the message that kills the worker uses up attempts; innocents beside it do not."""
        if self.options.ordered or self.attempts is None:
            async for event in self._batch(messages):
                yield event
            return
        fresh = [m for m in messages if m.deliveries == 1]
        if fresh:
            async for event in self._batch(fresh):
                yield event
        for message in (m for m in messages if m.deliveries > 1):
            key = f"attempts:{self.options.topic}:{self.options.group}:{_position(message)}"
            attempt = int(await self.attempts.get_setting(key) or 0) + 1
            await self.attempts.set_setting(key, str(attempt))
            async for event in self._batch([message], attempt=attempt):
                yield event

    async def _batch(self, messages: list[BusMessage], *, attempt: int = 0) -> AsyncIterator[Event]:
        batch = [self._decode(m, attempt) for m in messages]
        live = [d for d in batch if d.error is None]
        failed: list[tuple[Delivery, Exception]] = []
        if not self.options.ordered:
            events, failed = await self._isolate(live)
        else:
            events = await self._handle(live) if live else []
        for event in events:
            yield event
        dead = [d for d in batch if d.error is not None]  # bad input, marked by decode or the sink
        for delivery in batch:  # in position order; bad events of committed batch messages too
            if delivery.error is not None:
                yield await self._dead_letter(delivery)
            for rejected in delivery.rejected:
                yield await self._dead_letter_event(delivery.message, rejected)
        async for event in self._failed(failed):
            yield event
        failed_ids = {id(d) for d, _ in failed}
        self.held = [d.message for d in batch if d.deferred and d.error is None]
        acked = [d.message for d in batch if d.error is None and not d.deferred and id(d) not in failed_ids]
        await self._ack(acked)
        if self.held and len(self.held) == len(batch):  # all held back: nothing happened yet
            await asyncio.sleep(self.options.poll_seconds / 5)
            return
        self.counts.batches += 1
        self.counts.acked += len(acked)
        yield WorkerBatch(
            topic=self.options.topic,
            messages=len(batch),
            acked=len(acked),
            dead_lettered=len(dead) + sum(d.error is not None for d, _ in failed),
            events_rejected=sum(len(d.rejected) for d in batch),
            already_done=sum(d.done for d in batch),
            lag=await self._sampled_lag(),
        )

    async def _sampled_lag(self) -> int | None:
        """The group's backlog, asked of the bus at most once per ``LAG_SAMPLE_SECONDS`` (one
        round trip; a batch of 20,000 messages must not pay it every time)."""
        now = time.monotonic()
        if now - self._lag_at >= LAG_SAMPLE_SECONDS:
            self._lag_at = now
            try:
                self._lag = await self.bus.pending(self.options.topic, self.options.group)
            except Exception:  # noqa: BLE001 (a metric must never stop the worker; the next batch asks again)
                self._lag = None
        return self._lag

    async def _isolate(self, live: list[Delivery]) -> tuple[list[Event], list[tuple[Delivery, Exception]]]:
        """Commit what can be committed: a failing batch is split in halves until the message
        that fails is alone, so healthy messages behind a poison one still flow. When both
        halves fail entirely the sink itself is down: stop splitting."""
        if not live:
            return [], []
        try:
            return await self._handle(live), []
        except Exception as exc:  # noqa: BLE001 - any sink failure is retried or dead-lettered
            if len(live) == 1:
                return [], [(live[0], exc)]
            first, second = live[: len(live) // 2], live[len(live) // 2 :]
            first_events, first_failed = await self._isolate(first)
            if len(first) > 1 and len(first_failed) == len(first):
                try:  # the whole first half failed: is the sink down, or just this half poisoned?
                    return first_events + await self._handle(second), first_failed
                except Exception as again:  # noqa: BLE001
                    return first_events, first_failed + [(d, again) for d in second]
            second_events, second_failed = await self._isolate(second)
            return first_events + second_events, first_failed + second_failed

    def _decode(self, message: BusMessage, attempt: int = 0) -> Delivery:
        """``attempt``: this message's own recorded attempts (suspects); else bus deliveries count,
        with a wide margin when the attempts of suspects are recorded precisely."""
        delivery = Delivery(message)
        limit = self.options.max_attempts
        if attempt:
            used = attempt
        else:
            used = message.deliveries
            limit *= 1 if self.options.ordered or self.attempts is None else 10
        if used > limit:
            delivery.error = InputError(
                f"{self.options.topic}@{_position(message)}: {used - 1} attempts never completed "
                "(the message crashed, hung or kept failing the worker)"
            )
            delivery.stage = "deliver"
            return delivery
        if not self.options.decode_envelopes:
            return delivery
        try:
            delivery.event = cloudevents.decode(message.body)
        except InputError as exc:
            delivery.error = exc
        return delivery

    async def _handle(self, live: list[Delivery]) -> list[Event]:
        """Run the sink; on shutdown, give the batch ``drain_seconds`` to commit, then abandon it
        (nothing is acked, so it is redelivered)."""
        with span("headwater.worker.batch", topic=self.options.topic, messages=len(live)):
            return await self._handle_in_span(live)

    async def _handle_in_span(self, live: list[Delivery]) -> list[Event]:
        task = asyncio.ensure_future(self.sink.handle(live))
        stopping = asyncio.ensure_future(self.stop.wait())
        keepalive = asyncio.ensure_future(self._keep_alive([d.message for d in live]))
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self.options.drain_seconds)
            if not task.done():
                task.cancel()
            return await task
        finally:
            stopping.cancel()
            keepalive.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _keep_alive(self, messages: list[BusMessage]) -> None:
        """While the sink works, restart the messages' ack wait every third of it (and the held
        ones too), so a slow batch is never handed to a second worker meanwhile."""
        every = max(self.options.ack_wait_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(RetryableError):
                await self.bus.extend([*messages, *self.held])

    async def _failed(self, failed: list[tuple[Delivery, Exception]]) -> AsyncIterator[Event]:
        """Retry later (nak with backoff), or dead-letter what used up its attempts."""
        again = []
        for delivery, exc in failed:
            if delivery.message.deliveries >= self.options.max_attempts:
                delivery.error, delivery.stage = exc, "sink"
                yield await self._dead_letter(delivery)
            else:
                again.append(delivery.message)
        if again:
            delay = self.options.retry.initial_seconds * 2 ** min(again[0].deliveries, 6)
            with contextlib.suppress(RetryableError):
                await self.bus.nak(again, delay_seconds=min(delay, self.options.retry.max_seconds))

    async def _dead_letter_event(self, message: BusMessage, rejected: RejectedEvent) -> MessageDeadLettered:
        """The event alone becomes a dead letter (its body is what ``dlq replay`` publishes, as a
        single-event message); the bus's DLQ copy acks the message, whose sink already committed."""
        alone = msgspec.structs.replace(message, body=rejected.body)
        return await self._dead_letter(
            Delivery(alone, error=rejected.error), ref=f"{_position(message)}#{rejected.index}"
        )

    async def _dead_letter(self, delivery: Delivery, ref: str | None = None) -> MessageDeadLettered:
        error = delivery.error
        assert error is not None
        message = delivery.message
        ref = ref or _position(message)
        letter = DeadLetter(
            id=0,
            kind="message",
            input_ref=f"{message.topic}@{ref}",
            source=redact_url(self.bus.url),
            stage=delivery.stage,
            error_type=type(error).__name__,
            message=str(error),
            traceback="".join(traceback.format_exception(error)) if error.__traceback__ else "",
            attempts=message.deliveries,
            created_at="",
            payload=message.body,
        )
        dlq_id = await self.dead_letters.add(letter)
        # The bus's DLQ copy and the event are shown to operators too: secrets go, nothing else.
        shown = redact(letter.message)
        reason = f"{letter.error_type}: {shown}"
        copy = msgspec.structs.replace(message, body=redact(message.body))
        await with_retries(lambda: self.bus.dead_letter(copy, reason), self.options.retry)
        self.counts.dead += 1
        return MessageDeadLettered(
            topic=message.topic,
            position=ref,
            deliveries=message.deliveries,
            error_type=letter.error_type,
            message=shown,
            dlq_id=dlq_id,
        )

    async def _ack(self, messages: Sequence[BusMessage]) -> None:
        """A lost ack is harmless (the redelivery is a no-op), so retry briefly and move on."""
        if messages:
            with contextlib.suppress(RetryableError):
                await with_retries(lambda: self.bus.ack(messages), self.options.retry)


def _position(message: BusMessage) -> str:
    major, minor = message.position
    return f"{major}-{minor}" if minor else str(major)
