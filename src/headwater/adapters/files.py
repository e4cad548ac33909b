"""Local folder source.

Walks with ``os.scandir`` (streaming, sorted per directory) rather than a full recursive listing,
so memory stays flat on large trees. Symlinks are resolved; a link that leaves the root, dangles
or loops is reported as a skip with its reason and never read. Reading goes through fsspec so the
same code reads other file systems.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from headwater.adapters._process import batches_from_child, fork_is_safe
from headwater.errors import AdapterError, ConfigError, InputError
from headwater.models import normalize_relpath
from headwater.ports import SourceEntry

_WALK_BATCH = 1024  # entries per hand-off from the walking thread: one scan batch of the pipeline


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob once: ``**/`` spans folders (or none), ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


class _Globs:
    """Patterns as one alternation: one regex call per path, however many patterns."""

    def __init__(self, patterns: list[str]) -> None:
        self.regex = re.compile("|".join(f"(?:{glob_to_regex(p).pattern})" for p in patterns), re.DOTALL)
        self.empty = not patterns
        self.everything = "**/*" in patterns or "**" in patterns  # the default include

    def match(self, relpath: str) -> bool:
        return self.everything or (not self.empty and self.regex.fullmatch(relpath) is not None)


class FileSource:
    def __init__(self, url: str, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        raw = unquote(url.removeprefix("file://"))
        self.root = Path(raw).expanduser().resolve()
        self.uri = self.root.as_uri()
        self.include = _Globs(include or ["**/*"])
        self.exclude = _Globs(exclude or [])
        self._filesystem: Any = None

    def _check_root(self) -> None:
        if not self.root.is_dir():
            msg = f"source folder {self.root} does not exist or is not a directory"
            raise ConfigError(msg)

    async def scan(self) -> AsyncIterator[list[SourceEntry]]:
        self._check_root()

        def walk() -> Iterator[SourceEntry]:
            return self._walk(self.root, "", {self._key(self.root)})

        # In a child process (see ``_process``): the listing then runs beside the lookups and the
        # reporting instead of taking turns with them for the GIL. On Linux only, where the child
        # is sure to die with its parent.
        batches = batches_from_child(walk, SourceEntry, _WALK_BATCH) if _walk_in_child() else _in_thread(walk)
        async for batch in batches:
            yield batch

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        """The entries for these paths as ``scan`` would list them; a path that is gone, excluded
        or not a regular file is left out (for the caller, a deletion)."""
        self._check_root()
        return await asyncio.to_thread(lambda: [e for r in relpaths if (e := self._lookup_one(r))])

    def _lookup_one(self, relpath: str) -> SourceEntry | None:
        relpath = normalize_relpath(relpath)
        parts = relpath.split("/")
        if not relpath or ".." in parts or not self.include.match(relpath):
            return None
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if self.exclude.match(relpath) or any(self.exclude.match(p + "/") for p in prefixes[:-1]):
            return None
        path = self.root / relpath
        for prefix in prefixes:
            if (self.root / prefix).is_symlink() and (problem := self._link_problem(self.root / prefix)):
                return self._entry(relpath, path, problem=problem)
        if not path.exists():
            return None
        if not path.is_file():
            return self._entry(relpath, path, problem="not a regular file")
        return self._entry(relpath, path)

    @staticmethod
    def _key(path: Path) -> tuple[int, int]:
        st = path.stat()
        return (st.st_dev, st.st_ino)

    def _walk(self, folder: Path, prefix: str, visiting: set[tuple[int, int]]) -> Iterator[SourceEntry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_name)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while the walk was under way: its documents are gone
        except OSError as exc:
            # Not a skip: the documents under it would look deleted. The run stops instead.
            msg = f"cannot list {folder}: {exc.strerror or exc} (nothing was changed; fix it and re-run)"
            raise AdapterError(msg) from exc
        for item in entries:
            relpath = prefix + item.name
            # The common case inline, from the DirEntry alone (its type came with the listing):
            # a regular file, not a link, included and not excluded; one stat for size and mtime.
            if (
                item.is_file(follow_symlinks=False)
                and self.include.match(relpath)
                and not self.exclude.match(relpath)
            ):
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError as exc:
                    yield self._entry(relpath, Path(item.path), problem=f"cannot stat: {exc.strerror}")
                    continue
                if not relpath.isascii() or "\\" in relpath:
                    relpath = normalize_relpath(relpath)
                yield SourceEntry(relpath=relpath, size=st.st_size, mtime_ns=st.st_mtime_ns)
            else:
                yield from self._visit(item, relpath, visiting)

    def _visit(
        self, item: os.DirEntry[str], relpath: str, visiting: set[tuple[int, int]]
    ) -> Iterator[SourceEntry]:
        path = Path(item.path)
        if self.exclude.match(relpath) or (item.is_dir() and self.exclude.match(relpath + "/")):
            return
        if item.is_symlink():
            problem = self._link_problem(path)
            if problem:
                if self.include.match(relpath):
                    yield self._entry(relpath, path, problem=problem)
                return
        if item.is_dir():
            key = self._key(path)
            if key in visiting:
                yield self._entry(relpath, path, problem="symlink loop: directory already being walked")
                return
            yield from self._walk(path, relpath + "/", visiting | {key})
        elif self.include.match(relpath):
            if not item.is_file():
                yield self._entry(relpath, path, problem="not a regular file")
                return
            yield self._entry(relpath, path)

    def _link_problem(self, path: Path) -> str | None:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return f"broken or looping symlink: {exc.__class__.__name__}"
        if target != self.root and self.root not in target.parents:
            return "symlink points outside the source root"
        return None

    def _entry(self, relpath: str, path: Path, problem: str | None = None) -> SourceEntry:
        size = mtime_ns = 0
        if problem is None:
            try:
                st = path.stat()
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError as exc:
                problem = f"cannot stat: {exc.strerror}"
        return SourceEntry(
            relpath=normalize_relpath(relpath),
            size=size,
            mtime_ns=mtime_ns,
            problem=problem,
        )

    def _fs(self) -> Any:
        """One fsspec file system for the source: ``fsspec.open`` per file parsed the URL and
        built a wrapper each time (twice the cost of the read itself)."""
        if self._filesystem is None:
            import fsspec

            self._filesystem = fsspec.filesystem("file")
        return self._filesystem

    async def read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self._read, entry, max_bytes)

    async def read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        return await asyncio.to_thread(self._read_many, entries, max_bytes)

    def _read_many(self, entries: Sequence[SourceEntry], max_bytes: int) -> list[bytes | InputError]:
        results: list[bytes | InputError] = []
        for entry in entries:
            try:
                results.append(self._read(entry, max_bytes))
            except InputError as exc:
                results.append(exc)
        return results

    def _read(self, entry: SourceEntry, max_bytes: int) -> bytes:
        path = self.root / entry.relpath
        try:
            with self._fs().open(str(path), "rb") as handle:
                data = _read_bounded(handle, entry.size, max_bytes)
        except OSError as exc:
            msg = f"{entry.relpath}: cannot read: {exc.strerror or exc}"
            raise InputError(msg, field="content") from exc
        if len(data) > max_bytes:
            msg = f"{entry.relpath}: {len(data)}+ bytes is over the limit of {max_bytes} bytes"
            raise InputError(msg, field="size")
        return data


def _read_bounded(handle: Any, expected: int, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes, asked for in the size the listing saw: ``read(n)``
    allocates n bytes up front, and a 64 MB buffer per 5 KB file tripled the cost of a read.
    A file that grew since it was listed is read on, up to the same bound."""
    data: bytes = handle.read(min(expected, max_bytes) + 1)
    if len(data) > expected and len(data) <= max_bytes:
        data += handle.read(max_bytes + 1 - len(data))
    return data


async def _in_thread(walk: Callable[[], Iterator[SourceEntry]]) -> AsyncIterator[list[SourceEntry]]:
    """The walk in a thread, one batch ahead: the next batch is listed while the caller looks
    at this one."""
    walker = walk()
    ahead = asyncio.ensure_future(asyncio.to_thread(_take, walker, _WALK_BATCH))
    try:
        while True:
            batch = await ahead
            if len(batch) == _WALK_BATCH:
                ahead = asyncio.ensure_future(asyncio.to_thread(_take, walker, _WALK_BATCH))
            if batch:
                yield batch
            if len(batch) < _WALK_BATCH:
                return
    finally:
        if not ahead.done():  # the caller stopped early: let the walk thread finish alone
            ahead.cancel()


def _walk_in_child() -> bool:
    return sys.platform == "linux" and fork_is_safe()


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _take(iterator: Iterator[SourceEntry], n: int) -> list[SourceEntry]:
    out: list[SourceEntry] = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out
