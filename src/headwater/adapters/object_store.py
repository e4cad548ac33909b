"""Object-store sources: ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``, ``az://CONTAINER/PREFIX``.

Through fsspec (s3fs, gcsfs, adlfs: extras ``[s3]``, ``[gcs]``, ``[azure]``), with credentials
from where each SDK looks by default (environment variables, profiles, instance metadata) or from
``storage_options`` in headwater.toml; never from the URL, so a URL is safe to print, record and
dead-letter.

The rules are a folder's:

- **Identity.** An object's ``relpath`` is its key below the prefix, normalized as a file name is:
  the same tree gives the same ``doc_id``, chunks and fingerprint from a folder and from a bucket.
- **Incremental.** An entry's version stamp (``SourceEntry.mtime_ns``) is a 63-bit digest of the
  object's version tag: the ETag on S3 and Azure, the generation on GCS (new on every write).
  A store's last-modified time is not used: a rewrite within its one-second resolution would
  look unchanged. A no-change re-run is the listing alone, no object is read.
- **Listing.** Page by page as the store returns them (lexicographic by key: deterministic), so
  memory stays flat however many objects there are. A listing that fails raises, and the run
  stops without deleting anything: a missing bucket or refused credentials is a ConfigError,
  anything else (after the SDK's retries) a StoreUnavailable.
- **Reads.** Concurrent (``READS_IN_FLIGHT`` objects) and bounded by bytes in flight, not by
  object count; transient errors (throttling, 5xx, resets, timeouts) are retried with backoff
  beyond the SDK's own retries, then stop the run (StoreUnavailable: not the document's fault);
  an object that is gone or refused (permissions) is an InputError: that document alone is
  dead-lettered.

The SDKs are asyncio libraries that fsspec runs on its own event loop thread; every call here is
a coroutine handed to that loop (``_on_fs_loop``), so the caller's loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from headwater.adapters.selection import Selection
from headwater.errors import ConfigError, InputError, StoreUnavailable
from headwater.models import SourceEntry, normalize_relpath

T = TypeVar("T")

PAGE = 1000  # entries per page handed to the run: one listing request's worth
READS_IN_FLIGHT = 32
BYTES_IN_FLIGHT = 64 * 1024 * 1024
READ_ATTEMPTS = 4  # ours, after the SDK's own retries: a reset mid-body, a 503 it gave up on
READ_BACKOFF_SECONDS = 0.5

# URL scheme → (fsspec protocol, extra, what a top-level name is called)
SCHEMES = {
    "s3": ("s3", "s3", "bucket"),
    "gs": ("gcs", "gcs", "bucket"),
    "gcs": ("gcs", "gcs", "bucket"),
    "az": ("abfs", "azure", "container"),
    "abfs": ("abfs", "azure", "container"),
}


class ObjectEntry(SourceEntry, frozen=True, kw_only=True):
    """A listed object whose key below the prefix is not its normalized ``relpath`` (not NFC,
    a backslash): ``key`` is the key as the store spells it, and every read uses it."""

    key: str | None = None


def version_stamp(tag: str) -> int:
    """A version tag as the 63-bit integer the metadata store compares (``mtime_ns``)."""
    return int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big") >> 1


class ObjectStoreSource:
    def __init__(
        self,
        url: str,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            msg = f"source {url!r}: not an object-store URL (s3://, gs://, az://)"
            raise ConfigError(msg)
        self.protocol, self.extra, noun = SCHEMES[parts.scheme]
        if parts.username or parts.password or "@" in parts.netloc:
            msg = (
                f"source {parts.scheme}://…: credentials do not belong in the URL (it is printed and "
                "recorded); use the SDK's environment variables or profile, or storage_options in "
                "headwater.toml"
            )
            raise ConfigError(msg)
        if not parts.netloc:
            msg = f"source {url!r} names no {noun}: write {parts.scheme}://{noun.upper()}/PREFIX"
            raise ConfigError(msg)
        self.bucket = parts.netloc
        self.prefix = normalize_relpath(parts.path)  # "" or "docs/2024", no slashes at the ends
        self.uri = f"{parts.scheme}://{self.bucket}/{self.prefix}".rstrip("/")
        self.noun = noun
        self.selection = Selection(include, exclude)
        self.options = dict(storage_options or {})
        self._fs: Any = None
        self._reads = asyncio.Semaphore(READS_IN_FLIGHT)
        self._bytes = _ByteBudget(BYTES_IN_FLIGHT)

    # --- the filesystem ----------------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = _filesystem(self.protocol, self.extra, self.options)
        return self._fs

    async def _on_fs_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.fs.loop))

    def _key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def _path(self, entry: SourceEntry) -> str:
        own = entry.key if isinstance(entry, ObjectEntry) else None
        return f"{self.bucket}/{own if own is not None else self._key(entry.relpath)}"

    # --- listing -----------------------------------------------------------------------------------

    async def scan(self) -> AsyncIterator[list[SourceEntry]]:
        pages = _pages(self.protocol, self.fs, self.bucket, f"{self.prefix}/" if self.prefix else "")
        try:
            while True:
                try:
                    page = await self._on_fs_loop(anext(pages))
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise self._listing_error(exc) from exc
                entries: list[SourceEntry] = [
                    e for key, size, tag in page if (e := self._entry(key, size, tag)) is not None
                ]
                if entries:
                    yield entries
        finally:
            await self._on_fs_loop(pages.aclose())

    def _entry(self, key: str, size: int, tag: str) -> ObjectEntry | None:
        """``key`` is the whole key; a folder marker (``x/``) or an unselected key is None."""
        below = key[len(self.prefix) + 1 :] if self.prefix else key
        if not below or below.endswith("/"):
            return None
        relpath = normalize_relpath(below)
        if not self.selection.selected(relpath):
            return None
        return ObjectEntry(
            relpath=relpath, size=size, mtime_ns=version_stamp(tag), key=None if relpath == below else key
        )

    def _listing_error(self, exc: BaseException) -> Exception:
        where = f"{self.uri}"
        status = _http_status(exc)
        if isinstance(exc, FileNotFoundError) or status == 404:
            msg = f"cannot list {where}: the {self.noun} {self.bucket!r} does not exist (nothing was changed)"
            return ConfigError(msg)
        if isinstance(exc, PermissionError) or status in (401, 403) or _about_credentials(exc):
            msg = (
                f"cannot list {where}: access denied ({_reason(exc)}); check the credentials the SDK finds "
                "(nothing was changed)"
            )
            return ConfigError(msg)
        if isinstance(exc, TypeError):  # an SDK constructor refused an argument: a setting
            msg = f"cannot list {where}: {_reason(exc)}: check storage_options (nothing was changed)"
            return ConfigError(msg)
        msg = f"cannot list {where}: {_reason(exc)} (nothing was changed; fix it and re-run)"
        return StoreUnavailable(msg)

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        wanted = [r for r in dict.fromkeys(map(normalize_relpath, relpaths)) if self.selection.selected(r)]
        found = await asyncio.gather(*(self._lookup_one(r) for r in wanted))
        if None in found:
            await self._check_bucket()  # "not found" is a deletion only while the bucket is there
        return [e for e in found if e is not None]

    async def _check_bucket(self) -> None:
        try:
            exists = await self._on_fs_loop(self.fs._exists(self.bucket))
        except Exception as exc:
            raise self._listing_error(exc) from exc
        if not exists:
            raise self._listing_error(FileNotFoundError(self.bucket))

    async def _lookup_one(self, relpath: str) -> SourceEntry | None:
        key = self._key(relpath)
        try:
            async with self._reads:  # a worker's batch can name thousands of paths
                info = await self._on_fs_loop(self.fs._info(f"{self.bucket}/{key}"))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._listing_error(exc) from exc
        if info.get("type") != "file":
            return None
        return self._entry(key, int(info.get("size") or 0), _tag(self.protocol, info))

    # --- reads -------------------------------------------------------------------------------------

    async def read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        result = (await self.read_many([entry], max_bytes))[0]
        if isinstance(result, InputError):
            raise result
        return result

    async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        results = await asyncio.gather(*(self._read_one(e, max_bytes) for e in entries))
        return list(results)

    async def _read_one(self, entry: SourceEntry, max_bytes: int) -> bytes | InputError:
        if entry.size > max_bytes:
            return InputError(
                f"{entry.relpath}: {entry.size} bytes is over the limit of {max_bytes} bytes", field="size"
            )
        async with self._reads, self._bytes.hold(entry.size):
            for attempt in range(1, READ_ATTEMPTS + 1):
                try:
                    data: bytes = await self._on_fs_loop(self.fs._cat_file(self._path(entry)))
                except Exception as exc:
                    if (why := _refusal(exc)) is None:
                        if attempt == READ_ATTEMPTS:  # transient until the attempts are spent
                            where = f"{self.uri}/{entry.relpath}"
                            msg = f"cannot read {where}: {_reason(exc)} ({attempt} attempts)"
                            raise StoreUnavailable(msg) from exc
                        await asyncio.sleep(READ_BACKOFF_SECONDS * 2 ** (attempt - 1))
                        continue
                    msg = f"{entry.relpath}: cannot read: {why} ({_reason(exc)})"
                    return InputError(msg, field="content")
                if len(data) > max_bytes:
                    msg = f"{entry.relpath}: {len(data)} bytes is over the limit of {max_bytes} bytes"
                    return InputError(msg, field="size")
                return data
        msg = f"{entry.relpath}: no read attempt"  # pragma: no cover - the loop always returns
        raise AssertionError(msg)  # pragma: no cover


class _ByteBudget:
    """At most ``limit`` bytes of objects being read at once (an object larger than the whole
    budget waits for it to be free, then goes alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.changed = asyncio.Condition()

    def hold(self, size: int) -> _Held:
        return _Held(self, min(size, self.limit))


class _Held:
    def __init__(self, budget: _ByteBudget, size: int) -> None:
        self.budget, self.size = budget, size

    async def __aenter__(self) -> None:
        async with self.budget.changed:
            await self.budget.changed.wait_for(lambda: self.budget.used + self.size <= self.budget.limit)
            self.budget.used += self.size

    async def __aexit__(self, *exc: object) -> None:
        async with self.budget.changed:
            self.budget.used -= self.size
            self.budget.changed.notify_all()


# --- per store: the client, a listing page, an object's version tag --------------------------------


def _filesystem(protocol: str, extra: str, options: dict[str, Any]) -> Any:
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        hint = f"pip install 'headwater[{extra}]'"
        msg = f"{protocol} sources need a package that is not installed ({exc.name}): {hint}"
        raise ConfigError(msg) from exc
    if protocol == "gcs" and (os.environ.get("STORAGE_EMULATOR_HOST") or "endpoint_url" in options):
        # gcsfs probes an emulator for hierarchical namespaces over gRPC, 60 s per call
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        return cls(**{"use_listings_cache": False, **options})
    except (TypeError, ValueError) as exc:
        msg = f"storage_options for {protocol}: {exc} (see the fsspec {protocol} filesystem's arguments)"
        raise ConfigError(msg) from exc


Listed = list[tuple[str, int, str]]  # (key, size, version tag) of each object of a listing page


async def _pages(protocol: str, fs: Any, bucket: str, prefix: str) -> AsyncGenerator[Listed, None]:
    """(key, size, version tag) per object under ``prefix``, a listing page at a time."""
    if protocol == "s3":
        page: Listed = []
        async for info in fs._iterdir(bucket, delimiter="", prefix=prefix):
            if info.get("type") == "file":
                page.append((info["Key"].partition("/")[2], int(info["size"]), _tag(protocol, info)))
                if len(page) >= PAGE:
                    yield page
                    page = []
        if page:
            yield page
    elif protocol == "gcs":
        token = None
        while True:
            extra: dict[str, str] = {"pageToken": token} if token else {}
            listing = await fs._call_list_objects(bucket, prefix=prefix or None, maxResults=PAGE, **extra)
            yield [(i["name"], int(i.get("size", 0)), _tag(protocol, i)) for i in listing.get("items", [])]
            if not (token := listing.get("nextPageToken")):
                return
    else:
        async with fs.service_client.get_container_client(bucket) as container:
            async for blobs in container.list_blobs(name_starts_with=prefix or None).by_page():
                yield [(b.name, int(b.size), _tag(protocol, {"etag": b.etag})) async for b in blobs]


def _tag(protocol: str, info: dict[str, Any]) -> str:
    """The value that changes whenever the object's bytes do, unquoted (a listing and a HEAD
    of one SDK may differ in the quotes around the same ETag)."""
    if protocol == "s3":
        tag = info.get("ETag") or info.get("etag")
    elif protocol == "gcs":
        tag = info.get("generation") or info.get("md5Hash") or info.get("etag")
    else:
        tag = info.get("etag")
    return str(tag or "").strip('"')


def _refusal(exc: BaseException) -> str | None:
    """Why one object cannot be read for good (gone, or refused), or None: worth retrying. An
    SDK error the fsspec layer did not translate is judged by its HTTP status."""
    status = _http_status(exc)
    if isinstance(exc, FileNotFoundError) or status == 404:
        return "gone since the listing"
    if isinstance(exc, PermissionError) or status in (401, 403):
        return "access denied"
    return None


def _http_status(exc: BaseException | None) -> int | None:
    """The HTTP status in an SDK error or its causes (botocore, gcsfs, azure-core)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        for name in ("status_code", "code", "status"):
            value = getattr(exc, name, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        exc = exc.__cause__ or exc.__context__
    return None


def _about_credentials(exc: BaseException) -> bool:
    """The SDK found no usable credentials (botocore's NoCredentialsError, google-auth's
    DefaultCredentialsError, azure-core's ClientAuthenticationError): a setting to fix."""
    names = {t.__name__ for t in type(exc).__mro__}
    return any("Credential" in name or "Authentication" in name for name in names)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
