"""Redis Streams StreamBus (``redis://[:password@]host:port/db?ack_wait=SECONDS``), extra ``redis``.

Mapping: topic ``docs`` → stream key ``headwater:docs``; group → consumer group created at id 0
with MKSTREAM (a new group reads the whole history; BUSYGROUP is ignored); every ``open()`` joins
under a fresh consumer name ``host-pid-random``. Dead letters → stream ``headwater:docs:dlq``
(fields body, reason); delayed naks → hash ``headwater:docs:delay:<group>``. Needs Redis ≥ 7.

``consume``: (1) XAUTOCLAIM entries idle for at least the ack wait, from any consumer of the group
(how a killed or hung worker's messages move to the survivors), with a cursor kept across calls
so a long PEL is scanned to its end; (2) XREADGROUP ``>`` for new entries, blocking in slices of
at most a second until the timeout, so redeliveries falling due are not held up by a long block.

Delivery counts are the server's: XREADGROUP ``>`` sets 1, XAUTOCLAIM and XCLAIM add 1 (JUSTID
does not), and — a trap — re-reading one's own PEL with XREADGROUP ``0`` adds 1 too. There is no
such re-read here: a fresh consumer name has no backlog of its own, and re-reading after a
reconnect would hand a worker messages it is still processing. Whatever an earlier incarnation
held is taken over by XAUTOCLAIM after the ack wait, like any dead consumer's. Claimed entries'
counts are read back with XPENDING.

``nak(delay)``: Redis has no delayed nak, so the entry stays pending (position and count kept):
XCLAIM to ourselves with JUSTID and IDLE = ack wait minus delay makes XAUTOCLAIM find it expired
exactly ``delay`` from now. A delay longer than the ack wait cannot be written as an idle time
(Redis clamps a future TIME to now), so it is also stored as a not-before time (client clock, ms)
in the delay hash; an XAUTOCLAIM that takes such an entry early puts it back (XCLAIM with the
remaining IDLE and its RETRYCOUNT restored) and skips it.

``ack`` = XACK (+ HDEL). XACK does not check ownership: a late ack from a worker whose ack wait
expired still counts — sinks dedup, as everywhere. ``dead_letter`` = XADD to the DLQ and XACK in one
MULTI/EXEC, so a crash cannot leave one without the other. ``pending`` = XINFO GROUPS lag + PEL
size. Pitfalls (research/reliability-ecosystem.md §A4): XDEL/XTRIM do not clear a PEL, so nothing
here deletes or trims (retention is an operator's decision); Redis persistence is the server's
(run ``appendonly yes`` if a restart must not lose the log); failover can lose acknowledged writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from headwater.adapters._link import ReportsLink
from headwater.errors import ConfigError, HeadwaterError, PermanentError, RetryableError
from headwater.models import BusMessage

_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_GROUP = re.compile(r"[A-Za-z0-9_-]+")
_BLOCK_SLICE = 1.0  # seconds: the longest single XREADGROUP BLOCK
_RETRYABLE_RESPONSES = ("LOADING", "TRYAGAIN", "READONLY", "MASTERDOWN", "BUSY ")


def _key(topic: str) -> str:
    if not _TOPIC.fullmatch(topic):
        msg = f"bad topic {topic!r}: dot-separated words of letters, digits, '_' or '-'"
        raise ConfigError(msg)
    return f"headwater:{topic}"


def _group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        msg = f"bad consumer group {group!r}: letters, digits, '_' or '-' only"
        raise ConfigError(msg)
    return group


def _delay_key(key: str, group: str) -> str:
    return f"{key}:delay:{group}"


def _position(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms), int(seq or 0)


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisBus(ReportsLink):
    """StreamBus on Redis Streams consumer groups; see the module docstring for the semantics."""

    def __init__(self, url: str, *, ack_wait_seconds: float | None = None) -> None:
        self.url = url
        parts = urlsplit(url)
        self.ack_wait = ack_wait_seconds or float(parse_qs(parts.query).get("ack_wait", ["30"])[0])
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "ack_wait"])
        self._server = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        self._where = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        self._redis: aioredis.Redis | None = None
        self._consumer = ""
        self._groups: set[tuple[str, str]] = set()
        self._cursors: dict[tuple[str, str], bytes | str] = {}

    @property
    def _ack_wait_ms(self) -> int:
        return max(1, int(self.ack_wait * 1000))

    # -- connection and errors ---------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Vendor exceptions → RetryableError / PermanentError, naming the URL without credentials.
        A connection error marks the link ``lost``, the next call that gets through ``regained``."""
        try:
            yield
        except HeadwaterError:
            raise
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            raise PermanentError(self._say(f"{action} refused: {exc}")) from exc
        except (rexc.ConnectionError, rexc.TimeoutError, OSError, TimeoutError) as exc:
            self._link("lost", f"{action} failed: {exc!r}")
            raise RetryableError(self._say(f"{action} failed: {exc!r}")) from exc
        except rexc.ResponseError as exc:
            if str(exc).startswith("NOGROUP"):  # the server lost the group (restart without data)
                self._groups.clear()
                raise RetryableError(self._say(f"{action}: the consumer group vanished")) from exc
            cls = RetryableError if str(exc).startswith(_RETRYABLE_RESPONSES) else PermanentError
            raise cls(self._say(f"{action} failed: {exc}")) from exc
        except rexc.RedisError as exc:
            raise PermanentError(self._say(f"{action} failed: {exc!r}")) from exc
        else:
            self._link("regained", action)

    def _say(self, what: str) -> str:
        return f"Redis {self._where}: {what}"

    async def open(self) -> None:
        if self._redis is not None:
            return
        client = aioredis.Redis.from_url(
            self._server,
            socket_connect_timeout=5,
            socket_timeout=5 + _BLOCK_SLICE,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        )
        with self._errors("connect"):
            try:
                await client.ping()
            except BaseException:
                await client.aclose()
                raise
        self._redis = client
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is None:
            return
        with contextlib.suppress(rexc.RedisError, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self._leave_groups(client)
        await client.aclose()
        self._groups.clear()
        self._cursors.clear()

    async def _leave_groups(self, client: aioredis.Redis) -> None:
        """Forget our consumer where it holds nothing (DELCONSUMER would drop held entries)."""
        for key, group in self._groups:
            if not await client.xpending_range(key, group, "-", "+", 1, consumername=self._consumer):
                await client.xgroup_delconsumer(key, group, self._consumer)

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise PermanentError(self._say("the bus is not open"))
        return self._redis

    async def _ensure_group(self, key: str, group: str) -> None:
        if (key, group) in self._groups:
            return
        with self._errors(f"create group {group} on {key}"):
            try:
                await self._client().xgroup_create(key, group, id="0", mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add((key, group))

    # -- the port ------------------------------------------------------------------------------

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        key = _key(topic)
        with self._errors(f"publish to {key}"):
            async with self._client().pipeline(transaction=False) as pipe:
                for body in bodies:
                    pipe.xadd(key, {"body": bytes(body)})
                await pipe.execute()

    async def consume(
        self, topic: str, group: str, *, max_messages: int, timeout_seconds: float
    ) -> list[BusMessage]:
        key, group = _key(topic), _group(group)
        await self._ensure_group(key, group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while True:
            with self._errors(f"consume {key} as {group}"):
                out = await self._claim_expired(topic, key, group, max_messages)
                block = 0.0 if out else min(deadline - loop.time(), _BLOCK_SLICE)
                if len(out) < max_messages:
                    out += await self._read_new(topic, key, group, max_messages - len(out), block)
            if out or loop.time() >= deadline:
                return out

    async def _read_new(self, topic: str, key: str, group: str, limit: int, block: float) -> list[BusMessage]:
        block_ms = int(block * 1000)
        reply: Any = await self._client().xreadgroup(
            group, self._consumer, {key: ">"}, count=limit, block=block_ms if block_ms > 0 else None
        )
        entries = reply[0][1] if reply else []  # [[key, [(id, fields), ...]]]
        return [self._message(topic, key, group, entry_id, fields, 1) for entry_id, fields in entries]

    def _message(
        self, topic: str, key: str, group: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> BusMessage:
        return BusMessage(
            topic=topic, body=fields.get(b"body", b""), position=_position(entry_id),
            deliveries=deliveries, handle=(key, group, entry_id),  # what ack/nak need
        )  # fmt: skip

    async def _claim_expired(self, topic: str, key: str, group: str, limit: int) -> list[BusMessage]:
        """Take over entries idle past the ack wait; put back delayed naks that are not due yet."""
        r = self._client()
        cursor = self._cursors.get((key, group), "0-0")
        reply: Any = await r.xautoclaim(key, group, self._consumer, self._ack_wait_ms, cursor, count=limit)
        self._cursors[(key, group)] = reply[0]
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]
        if not entries:
            return []
        ids = [entry_id for entry_id, _ in entries]
        async with r.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(key, group, entry_id, entry_id, 1)
            pipe.hmget(_delay_key(key, group), ids)
            *pendings, not_before = await pipe.execute()
        counts = {p[0]["message_id"]: p[0]["times_delivered"] for p in pendings if p}
        early = {i: int(nb) for i, nb in zip(ids, not_before, strict=True) if nb and int(nb) > _now_ms()}
        await self._put_back(key, group, {i: (early[i], counts[i]) for i in early if i in counts})
        return [
            self._message(topic, key, group, entry_id, fields, counts[entry_id])
            for entry_id, fields in entries
            if entry_id in counts and entry_id not in early
        ]

    async def _put_back(self, key: str, group: str, early: dict[bytes, tuple[int, int]]) -> None:
        """Undo an early claim of a delayed nak: same count, idle such that it is due at not-before."""
        if not early:
            return
        async with self._client().pipeline(transaction=False) as pipe:
            for entry_id, (not_before, count) in early.items():
                idle = max(0, self._ack_wait_ms - (not_before - _now_ms()))
                pipe.xclaim(
                    key, group, self._consumer, 0, [entry_id], idle=idle, retrycount=count - 1, justid=True
                )
            await pipe.execute()

    @staticmethod
    def _by_group(messages: Sequence[BusMessage]) -> dict[tuple[str, str], list[bytes]]:
        groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for message in messages:
            key, group, entry_id = message.handle
            groups[(key, group)].append(entry_id)
        return groups

    async def ack(self, messages: Sequence[BusMessage]) -> None:
        if not messages:
            return
        with self._errors("ack"):
            async with self._client().pipeline(transaction=False) as pipe:
                for (key, group), ids in self._by_group(messages).items():
                    pipe.xack(key, group, *ids)
                    pipe.hdel(_delay_key(key, group), *ids)
                await pipe.execute()

    async def extend(self, messages: Sequence[BusMessage]) -> None:
        """XCLAIM to ourselves with JUSTID resets the idle time (the delivery count is kept)."""
        if not messages:
            return
        with self._errors("extend"):
            async with self._client().pipeline(transaction=False) as pipe:
                for (key, group), ids in self._by_group(messages).items():
                    pipe.xclaim(key, group, self._consumer, 0, list[Any](ids), idle=0, justid=True)
                await pipe.execute()

    async def nak(self, messages: Sequence[BusMessage], *, delay_seconds: float) -> None:
        if not messages:
            return
        delay_ms = int(delay_seconds * 1000)
        idle = max(0, self._ack_wait_ms - delay_ms)
        with self._errors("nak"):
            async with self._client().pipeline(transaction=False) as pipe:
                for (key, group), ids in self._by_group(messages).items():
                    pipe.xclaim(key, group, self._consumer, 0, list[Any](ids), idle=idle, justid=True)
                    if delay_ms > self._ack_wait_ms:
                        pipe.hset(_delay_key(key, group), mapping=dict.fromkeys(ids, _now_ms() + delay_ms))
                await pipe.execute()

    async def dead_letter(self, message: BusMessage, reason: str) -> None:
        key, group, entry_id = message.handle
        with self._errors(f"dead-letter to {key}:dlq"):
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.xadd(f"{key}:dlq", {"body": message.body, "reason": reason.encode()})
                pipe.xack(key, group, entry_id)
                pipe.hdel(_delay_key(key, group), entry_id)
                await pipe.execute()

    async def dead_letters(self, topic: str, limit: int = 100) -> list[tuple[bytes, str]]:
        key = f"{_key(topic)}:dlq"
        with self._errors(f"read {key}"):
            entries: Any = await self._client().xrange(key, "-", "+", count=limit)
        return [(f.get(b"body", b""), f.get(b"reason", b"").decode(errors="replace")) for _, f in entries]

    async def pending(self, topic: str, group: str) -> int:
        """Lag (never delivered to the group) + PEL (delivered, unacked); a new group: the stream."""
        key, group = _key(topic), _group(group)
        r = self._client()
        with self._errors(f"pending of {group} on {key}"):
            if not await r.exists(key):
                return 0
            for info in await r.xinfo_groups(key):
                if info["name"] == group.encode():
                    lag = info.get("lag")
                    if lag is None:  # unknown after XDEL/XTRIM inside the stream: count it
                        lag = await self._count_after(key, info["last-delivered-id"])
                    return int(lag) + int(info["pending"])
            return int(await r.xlen(key))

    async def _count_after(self, key: str, last_id: bytes) -> int:
        total, start = 0, b"(" + last_id
        while entries := cast(Any, await self._client().xrange(key, start, "+", count=1000)):
            total += len(entries)
            start = b"(" + entries[-1][0]
        return total
