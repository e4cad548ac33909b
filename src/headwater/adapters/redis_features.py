"""Online feature store on Redis (``redis://[:password@]HOST:PORT/DB[?prefix=hw]``), extra ``redis``.

Data model (``P`` = the URL's ``prefix``, default ``hw``, so deployments can share a DB):

- ``P:f:{feature_set}:{entity_id}`` — one hash per (entity, feature set); ``feature_set`` is
  percent-escaped so a ``:`` in it cannot make two pairs share a key. Its fields:

  - ``w:{version}:{window_ms}`` → the latest window row of that size, JSON ``[window_start_ms,
    revision, {features}]`` (the features object exactly as the batch carried it). The SQLite
    store keeps every (…, window_start_ms) row and reads the newest start; here only that row is
    kept: a row replaces the slot when its window starts later, or starts at the same time with a
    revision at least as high (SQLite's ``WHERE excluded.revision >= revision``), so a row never
    goes back to an older revision and a replayed batch rewrites what is there. ``get_latest``
    returns the same dicts as ``SQLiteFeatureStore.get_latest`` for the same commits.
  - ``p:{version}`` → the point's ``[event_time_ms, sequence]`` (replaced by each commit);
    ``p:{version}:f:{name}`` → ``"{ordinal} {json value}"`` per point feature, and
    ``p:{version}:n`` the last ordinal given. This is SQLite's ``json_patch``: a patch overwrites
    the fields it carries (in place), appends new ones (in patch order, the ordinal) and deletes
    a field whose value is ``null``; the others keep their values. Values are kept as JSON text,
    never decoded in Lua (``cjson`` would turn ``1.0`` into ``1`` and round at 14 digits).
    A nested object is replaced, not merged (point features are numbers).
- ``P:invalid`` — hash (scope, batch, idx) as JSON ``[scope, batch, idx]`` → ``[input_ref,
  field, reason]``; ``P:invalid:dlq`` the same key → dlq_id for delivered records;
  ``P:invalid:pending`` the set of keys not delivered. A recommit of the same record keeps its
  mark; a different record at the same key is pending again (as in SQLite).
- ``P:cp:{scope}`` — the checkpoint (msgpack).

``commit`` is one Lua script (EVALSHA, EVAL when the server answers NOSCRIPT) fed one msgpack
blob per batch (``cmsgpack`` decodes it server-side), so rows, point patches, invalid records and
the checkpoint are applied in one atomic step; the revision compare and the patch happen there.
Redis does not roll a script back: everything that could fail (a malformed row) is checked
before it is sent, and the script decodes its whole argument before its first write. A single
server (or a primary) only: the script writes keys it computes, which Redis Cluster refuses.

Durability: a commit is durable when it returns only if the server persists it — ``appendonly
yes`` with ``appendfsync always`` (``everysec`` can lose the last second). Otherwise a lost
commit is recovered the way a crash is: the run resumes from the checkpoint the store still has
and replays the batches after it from the offline store's parts, idempotently. A connection
failure (at ``open`` or in a call) is ``StoreUnavailable``, naming the URL without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from headwater.errors import ConfigError, HeadwaterError, PermanentError, StoreUnavailable
from headwater.models import BatchCommit, SignalCheckpoint, signal_checkpoint
from headwater.redaction import redact_url

T = TypeVar("T")
_SHAPE = "redis://[:password@]HOST:PORT/DB[?prefix=NAME]"
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_UNAVAILABLE_RESPONSES = ("LOADING", "TRYAGAIN", "READONLY", "MASTERDOWN", "BUSY ")

# ARGV[1]: msgpack [rows, points, invalid], each a flat array (strings and integers only: the
# server's cmsgpack knows no msgpack bin type):
#   rows:    key, field, window_start_ms, revision, value, ...
#   points:  key, field, meta, n, name_1, json_1, ..., name_n, json_n, ...
#   invalid: field, content, ...        (KEYS[1] contents, KEYS[2] dlq ids, KEYS[3] pending)
# ARGV[2], ARGV[3]: the checkpoint's key and value, when the batch has one.
_COMMIT = """
local batch = cmsgpack.unpack(ARGV[1])
local rows, points, invalid = batch[1], batch[2], batch[3]
for i = 1, #rows, 5 do
  local key, field, start, revision = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
  local old = redis.call('HGET', key, field)
  local apply = true
  if old then
    local s, r = string.match(old, '^%[(%-?%d+),(%-?%d+),')
    s, r = tonumber(s), tonumber(r)
    apply = start > s or (start == s and revision >= r)
  end
  if apply then redis.call('HSET', key, field, rows[i + 4]) end
end
local i = 1
while i <= #points do
  local key, field, n = points[i], points[i + 1], points[i + 3]
  local patch = redis.call('HEXISTS', key, field) == 1
  redis.call('HSET', key, field, points[i + 2])
  for j = i + 4, i + 3 + 2 * n, 2 do
    local name, value = field .. ':f:' .. points[j], points[j + 1]
    if patch and value == 'null' then
      redis.call('HDEL', key, name)
    else
      local cur = redis.call('HGET', key, name)
      local ordinal = cur and string.match(cur, '^(%d+) ') or redis.call('HINCRBY', key, field .. ':n', 1)
      redis.call('HSET', key, name, ordinal .. ' ' .. value)
    end
  end
  i = i + 4 + 2 * n
end
for k = 1, #invalid, 2 do
  local field, content = invalid[k], invalid[k + 1]
  if redis.call('HGET', KEYS[1], field) ~= content then
    redis.call('HSET', KEYS[1], field, content)
    redis.call('HDEL', KEYS[2], field)
    redis.call('SADD', KEYS[3], field)
  end
end
if ARGV[2] then redis.call('SET', ARGV[2], ARGV[3]) end
return #rows / 5
"""

# ARGV: field, dlq_id, ...; only records that exist are marked (SQLite's UPDATE … WHERE).
_MARK = """
for k = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[k]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[k], ARGV[k + 1])
    redis.call('SREM', KEYS[3], ARGV[k])
  end
end
return 0
"""


class _Script:
    """A Lua script run by EVALSHA, sent whole (EVAL, which also caches it) on NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_COMMIT_SCRIPT = _Script(_COMMIT)
_MARK_SCRIPT = _Script(_MARK)


class RedisFeatureStore:
    """Implements ``ports.FeatureStore`` on one Redis server; see the module docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._where = redact_url(url)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        try:
            port = parts.port
        except ValueError:
            port = None
        db = parts.path.lstrip("/")
        prefix = dict(query).get("prefix", "hw")
        if (
            parts.scheme not in ("redis", "rediss")
            or not parts.hostname
            or port is None
            or not (db == "" or db.isdigit())
            or parts.path.count("/") > 1
            or not _PREFIX.fullmatch(prefix)
        ):
            msg = f"online store URL {self._where} is malformed: expected {_SHAPE}"
            raise ConfigError(msg)
        self.prefix = prefix
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        self._server = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
        self._redis: aioredis.Redis | None = None
        self._io: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    def _key(self, feature_set: str, entity_id: str) -> str:
        return f"{self.prefix}:f:{quote(feature_set, safe='')}:{entity_id}"

    @property
    def _invalid_keys(self) -> list[str]:
        base = f"{self.prefix}:invalid"
        return [base, f"{base}:dlq", f"{base}:pending"]

    # -- connection and errors ---------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Vendor exceptions → StoreUnavailable (the server unreachable or not serving yet) or
        PermanentError, naming the URL without credentials."""
        try:
            yield
        except HeadwaterError:
            raise
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            raise PermanentError(self._say(f"{action} refused: {exc}")) from exc
        except (rexc.ConnectionError, rexc.TimeoutError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(self._say(f"{action} failed: {type(exc).__name__}: {exc}")) from exc
        except rexc.ResponseError as exc:
            cls = StoreUnavailable if str(exc).startswith(_UNAVAILABLE_RESPONSES) else PermanentError
            raise cls(self._say(f"{action} failed: {exc}")) from exc
        except rexc.RedisError as exc:
            raise PermanentError(self._say(f"{action} failed: {exc!r}")) from exc

    def _say(self, what: str) -> str:
        return f"online store {self._where}: {what}"

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise PermanentError(self._say("not open"))
        return self._redis

    async def _on_io(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` on the store's own event loop (a daemon thread): redis.asyncio connections
        belong to the loop they were made on, and a store stays open across loops (the CLI and
        the tests run each call under its own ``asyncio.run``), as the SQLite store's thread does."""
        if self._io is None:
            call.close()
            raise PermanentError(self._say("not open"))
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._io[0]))

    async def open(self) -> None:
        if self._io is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="headwater-redis-features", daemon=True)
        thread.start()
        self._io = (loop, thread)
        client = aioredis.Redis.from_url(
            self._server,
            socket_connect_timeout=5,
            socket_timeout=60,  # a 10^5-row commit runs for a fraction of a second
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        )
        try:
            with self._errors("connect"):
                await self._on_io(client.ping())  # type: ignore[arg-type]
        except BaseException:
            await self._on_io(client.aclose())
            await self._stop_io()
            raise
        self._redis = client

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(rexc.RedisError, OSError):
                await self._on_io(client.aclose())
        await self._stop_io()

    async def _stop_io(self) -> None:
        if self._io is None:
            return
        (loop, thread), self._io = self._io, None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    # -- FeatureRows -----------------------------------------------------------------------------

    async def commit(self, batch: BatchCommit) -> None:
        blob = msgspec.msgpack.encode(
            [
                self._rows(batch.online_rows),
                self._points(batch.online_points),
                _invalid(batch.invalid_rows),
            ]
        )
        with self._errors(f"commit of batch {batch.batch_no} of {batch.scope}"):
            await self._on_io(
                _COMMIT_SCRIPT(
                    self._client(), self._invalid_keys, [blob, *self._checkpoint(batch.checkpoint)]
                )
            )

    def _rows(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        flat: list[Any] = []
        for row in _shaped(rows, 7, "feature row"):
            entity_id, feature_set, version, window_ms, start, revision, features = row
            start, revision = int(start), int(revision)
            flat += [
                self._key(str(feature_set), str(entity_id)),
                f"w:{int(version)}:{int(window_ms)}",
                start,
                revision,
                f"[{start},{revision},{_object(features)}]",
            ]
        return flat

    def _points(self, points: list[tuple[Any, ...]]) -> list[Any]:
        flat: list[Any] = []
        for point in _shaped(points, 6, "point"):
            entity_id, feature_set, version, event_time_ms, sequence, features = point
            values = json.loads(_object(features))
            flat += [
                self._key(str(feature_set), str(entity_id)),
                f"p:{int(version)}",
                json.dumps([int(event_time_ms), int(sequence)]),
                len(values),
            ]
            for name, value in values.items():
                flat += [name, json.dumps(value)]
        return flat

    def _checkpoint(self, cp: SignalCheckpoint | None) -> list[Any]:
        if cp is None:
            return []
        value = [
            cp.fingerprint, cp.next_batch, cp.file_index, cp.row_offset,
            dict(sorted(cp.counters.items())), bytes(cp.state), cp.status,
        ]  # fmt: skip
        return [f"{self.prefix}:cp:{cp.scope}", msgspec.msgpack.encode(value)]

    async def get_latest(
        self, entity_id: str, feature_set: str, version: int | None = None
    ) -> list[dict[str, Any]]:
        with self._errors(f"read {entity_id!r} of {feature_set!r}"):
            stored: dict[Any, Any] = await self._on_io(
                self._client().hgetall(self._key(feature_set, entity_id))  # type: ignore[arg-type]
            )
        fields = {k.decode(): v.decode() for k, v in stored.items()}
        windows: dict[int, dict[int, str]] = {}
        for name, value in fields.items():
            kind, _, rest = name.partition(":")
            if kind == "w":
                v, _, window_ms = rest.partition(":")
                windows.setdefault(int(v), {})[int(window_ms)] = value
        if version is None:
            if not windows:
                return []
            version = max(windows)
        head: dict[str, Any] = {"entity_id": entity_id, "feature_set": feature_set, "version": version}
        out: list[dict[str, Any]] = []
        for window_ms, value in sorted(windows.get(version, {}).items()):
            start, revision, features = json.loads(value)
            out.append(
                {**head, "window_ms": window_ms, "window_start_ms": start, "revision": revision, **features}
            )
        meta = fields.get(f"p:{version}")
        if meta is not None:
            event_time_ms, sequence = json.loads(meta)
            out.append(
                {"kind": "point", **head, "event_time_ms": event_time_ms, "sequence": sequence,
                 **_point_features(fields, f"p:{version}:f:")}
            )  # fmt: skip
        return out

    # -- SignalCheckpoints -------------------------------------------------------------------------

    async def load_checkpoint(self, scope: str) -> SignalCheckpoint | None:
        with self._errors(f"load the checkpoint of {scope}"):
            raw: Any = await self._on_io(self._client().get(f"{self.prefix}:cp:{scope}"))  # type: ignore[arg-type]
        if raw is None:
            return None
        fingerprint, next_batch, file_index, row_offset, counters, state, status = msgspec.msgpack.decode(raw)
        return signal_checkpoint(
            scope, fingerprint, next_batch=next_batch, position=(file_index, row_offset),
            counters=counters, state=bytes(state), status=status,
        )  # fmt: skip

    # -- InvalidRecordOutbox ---------------------------------------------------------------------

    async def undelivered_invalid(self) -> list[dict[str, Any]]:
        contents_key, _, pending_key = self._invalid_keys
        client = self._client()

        async def read() -> tuple[list[Any], list[Any]]:
            pending: set[Any] = await client.smembers(pending_key)
            keys = sorted(json.loads(k) for k in pending)
            if not keys:
                return [], []
            contents: list[Any] = await client.hmget(contents_key, [json.dumps(k) for k in keys])
            return keys, contents

        with self._errors("read the invalid-record outbox"):
            keys, contents = await self._on_io(read())
        out = []
        for (scope, batch, idx), content in zip(keys, contents, strict=True):
            if content is not None:
                input_ref, field, reason = json.loads(content)
                out.append(
                    {"scope": scope, "batch": batch, "idx": idx, "input_ref": input_ref, "field": field,
                     "reason": reason, "dlq_id": None}
                )  # fmt: skip
        return out

    async def mark_delivered(self, keys: list[tuple[str, int, int, int]]) -> None:
        if not keys:
            return
        args: list[Any] = []
        for scope, batch, idx, dlq_id in keys:
            args += [json.dumps([str(scope), int(batch), int(idx)]), int(dlq_id)]
        with self._errors("mark invalid records delivered"):
            await self._on_io(_MARK_SCRIPT(self._client(), self._invalid_keys, args))


def _shaped(rows: list[tuple[Any, ...]], width: int, what: str) -> list[tuple[Any, ...]]:
    """Every tuple checked before anything is sent: a script that failed halfway would stay applied."""
    for row in rows:
        if len(row) != width:
            msg = f"a {what} has {len(row)} values, not {width}: {row!r:.200}"
            raise PermanentError(msg)
    return rows


def _object(features: Any) -> str:
    text = features if isinstance(features, str) else bytes(features).decode()
    if not text.lstrip().startswith("{"):
        msg = f"features must be a JSON object, not {text!r:.200}"
        raise PermanentError(msg)
    return text


def _invalid(rows: list[tuple[Any, ...]]) -> list[Any]:
    flat: list[Any] = []
    for scope, batch, idx, input_ref, field, reason in _shaped(rows, 6, "invalid record"):
        flat += [json.dumps([str(scope), int(batch), int(idx)]), json.dumps([input_ref, field, reason])]
    return flat


def _point_features(fields: dict[str, str], prefix: str) -> dict[str, Any]:
    """The stored point fields in patch order (their ordinals), values decoded."""
    found = []
    for name, value in fields.items():
        if name.startswith(prefix):
            ordinal, _, raw = value.partition(" ")
            found.append((int(ordinal), name[len(prefix) :], raw))
    return {name: json.loads(raw) for _, name, raw in sorted(found)}
