"""Web pages as a source: ``https://HOST/.../sitemap.xml``, ``http(s)://HOST/.../urls.txt``
(a text list of URLs) or ``urls+file:///PATH/urls.txt`` (the list on this machine); the listing
and page names are described in ``adapters/http_listing.py``.

**Versions and conditional requests.** ``scan`` fetches the listing, then asks each selected
page ``HEAD`` with ``If-None-Match``/``If-Modified-Since`` carrying the validators (ETag,
Last-Modified) its previous scan saw. These are kept in a small file under the home
(``HOME/http-validators/<source>.json``, names and validators only, written atomically at the
end of each scan); without a home (a bare ``registry.create``) they live in the source object.
A ``304`` lists the page with the version recorded before, so an unchanged page is skipped
unread: a no-change re-run costs one listing fetch plus one conditional ``HEAD`` (a ``304``,
no body) per page, and never reads or embeds. A page's version (``SourceEntry.mtime_ns``) is its
``Last-Modified`` in nanoseconds, bumped by one when the validators changed but that time did
not (a same-second edit); with only an ETag it is a 63-bit digest of it (the object stores'
convention); with neither validator it is the scan's clock, so the page is read every run and
its content hash decides (nothing is re-embedded for equal bytes). ``size`` is the
``Content-Length``. A lost validators file costs one unconditional ``HEAD`` per page and can miss
only an edit that kept both the size and the second of ``Last-Modified``. ``<lastmod>`` in a
sitemap is not trusted (sites often set it to the build time): the conditional request decides.

**Errors.** Transient failures (connection errors, timeouts, 408/425/429/500/502/503/504) are
retried with exponential backoff, honoring ``Retry-After`` up to ``max_retry_after_seconds``;
a site that stays unreachable through them, for the listing or for one page, raises
StoreUnavailable (the run stops with exit 5 as for an object store: nothing is deleted or
dead-lettered, and the same command continues later). A listing answered with another status, or
that cannot be understood, raises AdapterError (exit 1, nothing deleted). A page answering
401/403/404/410 or another client error is listed with a version made from its status and its
read raises InputError naming the status (dead-lettered once; read again when its answer
changes). Credentials in URLs (user, password, secret-named query parameters) never appear in
names, messages or ``uri``.

**Reads.** One ``httpx.AsyncClient`` per scan or batch of reads, ``concurrency`` requests in
flight, redirects followed (at most ``max_redirects``), bodies streamed and refused past
``max_bytes``; the pipeline's read batches (a few MiB of listed sizes each) bound the bytes held.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import msgspec

from headwater.adapters.http_listing import listing_base, page_name, parse_listing
from headwater.adapters.selection import Selection
from headwater.errors import AdapterError, ConfigError, HeadwaterError, InputError, StoreUnavailable
from headwater.models import SourceEntry, normalize_relpath, sha256_hex
from headwater.redaction import redact_text, redact_url

T = TypeVar("T")
SCAN_PAGE = 256
LISTING_MAX_BYTES = 64 * 1024 * 1024  # the sitemap protocol allows 50 MB uncompressed
MAX_SITEMAPS = 1000
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_GONE_OR_DENIED = {401: "unauthorized", 403: "forbidden", 404: "not found", 410: "gone"}
_NO_HEAD = frozenset({405, 501})
_USER_AGENT = "headwater (+https://github.com/headwater)"


class HttpEntry(SourceEntry, frozen=True, kw_only=True):
    """A listed page: ``url`` is what reads fetch (it may hold credentials: never shown)."""

    url: str = ""


class Validators(msgspec.Struct, array_like=True, frozen=True):
    etag: str | None
    last_modified: str | None
    size: int
    stamp: int


class HttpSource:
    def __init__(
        self,
        url: str,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        *,
        home: Path | None = None,
        concurrency: int = 16,
        timeout_seconds: float = 30.0,
        attempts: int = 5,
        backoff_seconds: float = 0.5,
        max_retry_after_seconds: float = 60.0,
        max_redirects: int = 5,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "urls+file":
            self.listing = unquote(urlsplit(url).path)
            self.base: str | None = None
            if not self.listing:
                msg = f"{redact_url(url)}: give the list's path (urls+file:///PATH/urls.txt)"
                raise ConfigError(msg)
        elif scheme in ("http", "https") and urlsplit(url).hostname:
            self.listing, self.base = url, listing_base(url)
        else:
            msg = f"{redact_url(url)}: not a listing URL (https://HOST/sitemap.xml, https://HOST/urls.txt, urls+file:///PATH)"
            raise ConfigError(msg)
        self.uri = redact_url(url)
        self.selection = Selection(include, exclude)
        self.validators_path = (
            home / "http-validators" / f"{sha256_hex(self.uri)[:24]}.json" if home else None
        )
        self.concurrency = concurrency
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self.max_redirects = max_redirects
        self._validators: dict[str, Validators] | None = None

    # --- the port --------------------------------------------------------------------------

    async def scan(self) -> AsyncIterator[list[SourceEntry]]:
        async with self._client() as client:
            pages = await self._pages(client)
            known = self._load()
            seen: dict[str, Validators] = {}
            complete = False
            try:
                for start in range(0, len(pages), SCAN_PAGE):
                    chunk = pages[start : start + SCAN_PAGE]
                    yield list(await _all([self._probe(client, p, known, seen) for p in chunk]))
                complete = True
            finally:
                self._save(seen if complete else {**known, **seen})

    async def count(self) -> int:
        """How many pages ``scan`` lists: one fetch of the listing (no page is asked)."""
        async with self._client() as client:
            return len(await self._pages(client))

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        wanted = {normalize_relpath(r) for r in relpaths}
        if not wanted:
            return []
        async with self._client() as client:
            pages = [p for p in await self._pages(client) if p.relpath in wanted]
            known = self._load()
            seen = dict(known)
            found: list[SourceEntry] = list(await _all([self._probe(client, p, known, seen) for p in pages]))
        self._save(seen)
        return found

    async def read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        async with self._client() as client:
            return await self._get(client, entry, max_bytes)

    async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        async with self._client() as client:

            async def one(entry: SourceEntry) -> bytes | InputError:
                try:
                    return await self._get(client, entry, max_bytes)
                except InputError as exc:
                    return exc

            return await _all([one(e) for e in entries])

    # --- listing ---------------------------------------------------------------------------

    def _client(self) -> _Client:
        return _Client(
            follow_redirects=True,
            max_redirects=self.max_redirects,
            timeout=httpx.Timeout(self.timeout_seconds, pool=None),  # queued requests wait their turn
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            headers={"User-Agent": _USER_AGENT},
        )

    async def _pages(self, client: _Client) -> list[HttpEntry]:
        """Every selected page, once, sorted by name; pages that cannot be read are listed with
        their problem. Raises AdapterError when a listing cannot be fetched or understood."""
        todo, fetched, urls = [self.listing], 0, []
        while todo:
            where = todo.pop(0)
            fetched += 1
            if fetched > MAX_SITEMAPS:
                msg = f"{self.uri}: more than {MAX_SITEMAPS} sitemaps in its index"
                raise AdapterError(msg)
            listing = parse_listing(await self._fetch_listing(client, where), redact_url(where))
            urls += listing.pages
            todo += listing.sitemaps
        named: dict[str, HttpEntry] = {}
        for url in urls:
            relpath, problem = page_name(url, self.base)
            if relpath in named or (problem is None and not self.selection.selected(relpath)):
                continue
            named[relpath] = HttpEntry(relpath=relpath, size=0, mtime_ns=0, problem=problem, url=url)
        return [named[r] for r in sorted(named)]

    async def _fetch_listing(self, client: _Client, url: str) -> bytes:
        shown = redact_url(url)
        try:
            if self.base is None and url == self.listing:
                return await asyncio.to_thread(_read_file, url)
            return await self._with_retries(shown, lambda: self._fetch_small(client, url, shown))
        except (HeadwaterError, OSError, httpx.HTTPError) as exc:
            reason = redact_text(exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc))
            msg = f"cannot list {self.uri}: {reason} (nothing was changed)"
            kind: type[HeadwaterError] = AdapterError
            if isinstance(exc, StoreUnavailable | ConfigError):
                kind = type(exc)
            elif isinstance(exc, FileNotFoundError | PermissionError):
                kind = ConfigError
            raise kind(msg) from exc

    async def _fetch_small(self, client: _Client, url: str, shown: str) -> bytes:
        async with client.stream("GET", url) as response:
            _raise_transient(response, shown)
            if response.status_code != httpx.codes.OK:
                msg = f"{shown} answered HTTP {response.status_code} {response.reason_phrase}"
                # a listing that is not there or not ours to read: the URL or credentials to fix
                raise (ConfigError if response.status_code in (401, 403, 404, 410) else AdapterError)(msg)
            data = await _bounded_body(response, LISTING_MAX_BYTES, shown)
        if len(data) > LISTING_MAX_BYTES:
            msg = f"{shown}: over {LISTING_MAX_BYTES} bytes"
            raise AdapterError(msg)
        if url.endswith(".gz") or data[:2] == b"\x1f\x8b":
            data = _gunzip(data, shown)
        return data

    # --- pages -----------------------------------------------------------------------------

    async def _probe(
        self, client: _Client, page: HttpEntry, known: dict[str, Validators], seen: dict[str, Validators]
    ) -> HttpEntry:
        """The page's listing entry: a conditional ``HEAD`` with the validators seen before."""
        if page.problem is not None:
            return page
        before = known.get(page.relpath)
        headers = {}
        if before is not None and before.etag:
            headers["If-None-Match"] = before.etag
        if before is not None and before.last_modified:
            headers["If-Modified-Since"] = before.last_modified
        shown = redact_url(page.url)

        async def head() -> httpx.Response:
            async with client.gate:
                response = await client.head(page.url, headers=headers)
            _raise_transient(response, shown)
            return response

        try:
            response = await self._with_retries(shown, head)
        except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _entry(page, 0, _digest63(f"error {type(exc).__name__}"))  # its read says why
        status = response.status_code
        if status == httpx.codes.NOT_MODIFIED and before is not None:
            seen[page.relpath] = before
            return _entry(page, before.size, before.stamp)
        if status in _NO_HEAD:  # no HEAD here: read every run, the content hash decides
            return _entry(page, 0, time.time_ns())
        if not 200 <= status < 300:
            return _entry(page, 0, _digest63(f"http {status}"))
        found = _validators(response, before)
        if found.etag or found.last_modified:
            seen[page.relpath] = found
        return _entry(page, found.size, found.stamp)

    async def _get(self, client: _Client, entry: SourceEntry, max_bytes: int) -> bytes:
        url = entry.url if isinstance(entry, HttpEntry) and entry.url else self._url_of(entry.relpath)
        shown = redact_url(url)

        async def get() -> bytes:
            async with client.gate, client.stream("GET", url) as response:
                _raise_transient(response, shown)
                status = response.status_code
                if status != httpx.codes.OK:
                    reason = _GONE_OR_DENIED.get(status, response.reason_phrase or "refused")
                    field = "access" if status in (401, 403) else "content"
                    msg = f"{entry.relpath}: {shown} answered HTTP {status} ({reason})"
                    raise InputError(msg, field=field)
                data = await _bounded_body(response, max_bytes, entry.relpath)
            if len(data) > max_bytes:
                msg = f"{entry.relpath}: {len(data)}+ bytes is over the limit of {max_bytes} bytes"
                raise InputError(msg, field="size")
            return data

        try:
            return await self._with_retries(shown, get)
        except httpx.TooManyRedirects as exc:
            msg = f"{entry.relpath}: {shown}: more than {self.max_redirects} redirects"
            raise InputError(msg, field="content") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            msg = f"{entry.relpath}: cannot fetch {shown}: {type(exc).__name__}"
            raise InputError(msg, field="content") from exc

    def _url_of(self, relpath: str) -> str:
        """A page named by a caller without its entry (never the case in a run): its URL under
        the listing's folder, as far as the name says it."""
        return (self.base or "https://") + relpath

    async def _with_retries(self, shown: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` again after transient failures, with backoff (or ``Retry-After``); the last
        failure raises StoreUnavailable naming the URL (the run stops, exit 5, as for a bucket)."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, _Transient) as exc:
                if attempt == self.attempts:
                    what = str(exc) if isinstance(exc, _Transient) else f"{type(exc).__name__}: {exc}"
                    msg = f"{shown} failed {attempt} times, last: {redact_text(what)[:300]}"
                    raise StoreUnavailable(msg) from exc
                wait = exc.retry_after if isinstance(exc, _Transient) else None
                if wait is None:
                    wait = self.backoff_seconds * 2 ** (attempt - 1) * (1 + random.random() / 2)
                await asyncio.sleep(min(wait, self.max_retry_after_seconds))
        msg = "unreachable"
        raise AssertionError(msg)

    # --- validators ------------------------------------------------------------------------

    def _load(self) -> dict[str, Validators]:
        if self._validators is None:
            self._validators = {}
            if self.validators_path is not None:
                with contextlib.suppress(OSError, msgspec.DecodeError):
                    raw = self.validators_path.read_bytes()
                    self._validators = msgspec.json.decode(raw, type=dict[str, Validators])
        return self._validators

    def _save(self, validators: dict[str, Validators]) -> None:
        """Atomically; a failed write costs the next scan its conditional requests, nothing else."""
        self._validators = validators
        path = self.validators_path
        if path is None:
            return
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_bytes(msgspec.json.encode(validators))
            scratch.replace(path)


class _Client(httpx.AsyncClient):
    """A client whose ``gate`` lets ``concurrency`` requests in at once: httpcore's pool looks
    over its whole queue for every request, and 256 queued requests took most of a scan."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = asyncio.Semaphore(options["limits"].max_connections)


async def _all(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every call's result in order; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


class _Transient(Exception):  # an internal signal: never leaves this module
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _raise_transient(response: httpx.Response, shown: str) -> None:
    if response.status_code in _TRANSIENT_STATUS:
        phrase = f"HTTP {response.status_code} {response.reason_phrase}"
        msg = f"{shown} answered {phrase}"
        raise _Transient(msg, _retry_after(response.headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _validators(response: httpx.Response, before: Validators | None) -> Validators:
    etag = response.headers.get("ETag")
    last_modified = response.headers.get("Last-Modified")
    modified_ns = None
    if last_modified:
        try:
            modified_ns = int(email.utils.parsedate_to_datetime(last_modified).timestamp()) * 10**9
        except (TypeError, ValueError, IndexError):
            last_modified = None
    try:
        size = int(response.headers.get("Content-Length", "0"))
    except ValueError:
        size = 0
    if modified_ns is not None:
        stamp = modified_ns
    elif etag:
        stamp = _digest63(f"etag {etag}")
    else:
        return Validators(None, None, size, time.time_ns())
    changed = before is not None and (before.etag, before.last_modified) != (etag, last_modified)
    if changed and before is not None and stamp <= before.stamp and modified_ns is not None:
        stamp = before.stamp + 1  # new validators, same second: a new version all the same
    return Validators(etag, last_modified, size, stamp)


def _entry(page: HttpEntry, size: int, stamp: int) -> HttpEntry:
    return HttpEntry(relpath=page.relpath, size=size, mtime_ns=stamp, url=page.url)


def _digest63(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


async def _bounded_body(response: httpx.Response, max_bytes: int, what: str) -> bytes:
    """At most ``max_bytes + 1`` bytes of the (decoded) body: the caller tells "too large"."""
    parts, total = [], 0
    try:
        async for part in response.aiter_bytes():
            parts.append(part)
            total += len(part)
            if total > max_bytes:
                break
    except httpx.DecodingError as exc:
        msg = f"{what}: the body cannot be decoded ({exc})"
        raise InputError(msg, field="content") from exc
    return b"".join(parts)[: max_bytes + 1]


def _gunzip(data: bytes, shown: str) -> bytes:
    import zlib

    inflate = zlib.decompressobj(wbits=47)
    try:
        out = inflate.decompress(data, LISTING_MAX_BYTES + 1)
    except zlib.error as exc:
        msg = f"{shown}: not valid gzip ({exc})"
        raise AdapterError(msg) from exc
    if len(out) > LISTING_MAX_BYTES:
        msg = f"{shown}: over {LISTING_MAX_BYTES} bytes once decompressed"
        raise AdapterError(msg)
    return out


def _read_file(path: str) -> bytes:
    with Path(path).expanduser().open("rb") as handle:
        data = handle.read(LISTING_MAX_BYTES + 1)
    if len(data) > LISTING_MAX_BYTES:
        msg = f"{path}: over {LISTING_MAX_BYTES} bytes"
        raise AdapterError(msg)
    return data
