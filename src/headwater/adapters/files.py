"""Local folder source.

Walks with ``os.scandir`` (streaming, sorted per directory) rather than a full recursive listing,
so memory stays flat on large trees. Symlinks are resolved; a link that leaves the root, dangles
or loops is reported as a skip with its reason and never read, and so is anything that is not a
regular file (a FIFO is never opened: opening one blocks). A folder that cannot be listed stops
the run (its documents would otherwise look deleted).

A file is known by its name normalized (NFC, a backslash as ``%5C``, each byte that is not UTF-8
as ``%XX``): that is its identity (``relpath``, ``doc_id``) on every system. Where the name on
disk differs, the entry carries it (``LocalEntry.disk``) and every read uses it. A normalized
name that another file on disk already has is skipped, naming that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

from headwater.adapters.selection import Selection
from headwater.child_processes import batches_from_child, fork_is_safe
from headwater.errors import AdapterError, ConfigError, InputError
from headwater.models import SourceEntry, normalize_relpath

_WALK_BATCH = 1024  # entries per hand-off from the walking thread: one scan batch of the pipeline


class LocalEntry(SourceEntry, frozen=True, kw_only=True):
    """A listed file whose name on disk is not its normalized ``relpath``: ``disk`` is the path
    under the root as the file system spells it (bytes: it may not be UTF-8)."""

    disk: bytes | None = None


def identity_of(relpath: str) -> str:
    """The normalized form of an on-disk relative path (``/``-separated; undecodable bytes as
    Python's surrogate escapes, as ``os.scandir`` gives them). A fixed point of
    ``normalize_relpath``, so ``doc_id`` agrees."""
    if relpath.isascii() and "\\" not in relpath:
        return relpath
    escaped = "".join(
        f"%{ord(ch) - 0xDC00:02X}" if "\udc80" <= ch <= "\udcff" else ch
        for ch in relpath.replace("\\", "%5C")
    )
    return unicodedata.normalize("NFC", escaped)


class FileSource:
    def __init__(self, url: str, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        raw = unquote(url.removeprefix("file://"))
        try:
            self.root = Path(raw).expanduser().resolve()
        except RuntimeError as exc:  # "~nobody-by-that-name"
            msg = f"source folder {raw}: {exc} (give the folder's full path)"
            raise ConfigError(msg) from exc
        self.uri = self.root.as_uri()
        self.selection = Selection(include, exclude)
        self.include, self.exclude = self.selection.include, self.selection.exclude

    def _check_root(self) -> None:
        if not self.root.is_dir():
            msg = f"source folder {self.root} does not exist or is not a directory"
            raise ConfigError(msg)

    async def scan(self) -> AsyncIterator[list[SourceEntry]]:
        self._check_root()

        def walk() -> Iterator[LocalEntry]:
            return self._walk(self.root, "", {self._key(self.root)})

        # In a child process (see ``_process``): the listing then runs beside the lookups and the
        # reporting instead of taking turns with them for the GIL. On Linux only, where the child
        # is sure to die with its parent.
        batches = batches_from_child(walk, LocalEntry, _WALK_BATCH) if _walk_in_child() else _in_thread(walk)
        async for batch in batches:
            yield cast("list[SourceEntry]", batch)  # read only by the caller

    async def count(self) -> int:
        """How many entries ``scan`` lists, by the same walk run ahead of it without pauses (the
        listing itself waits for the work it feeds): a progress bar's total within a second or
        two on 100,000 files. In a child process like the listing, so it costs the run no GIL."""
        self._check_root()

        def counted() -> Iterator[int]:
            yield sum(1 for _ in self._walk(self.root, "", {self._key(self.root)}, stat_files=False))

        if _walk_in_child():
            async with contextlib.aclosing(batches_from_child(counted, int, 1)) as batches:
                async for batch in batches:
                    return batch[0]
            return 0
        return await asyncio.to_thread(lambda: next(counted()))

    async def lookup(self, relpaths: list[str]) -> list[SourceEntry]:
        """The entries for these paths as ``scan`` would list them; a path that is gone, excluded
        or not a regular file is left out (for the caller, a deletion)."""
        self._check_root()
        return await asyncio.to_thread(lambda: [e for r in relpaths if (e := self._lookup_one(r))])

    def _lookup_one(self, relpath: str) -> LocalEntry | None:
        relpath = normalize_relpath(relpath)
        if not self.selection.selected(relpath) or (disk := self._on_disk(relpath.split("/"))) is None:
            return None
        path = self.root / disk
        disk_parts = disk.split("/")
        for depth in range(1, len(disk_parts) + 1):
            prefix = self.root.joinpath(*disk_parts[:depth])
            if prefix.is_symlink() and (problem := self._link_problem(prefix)):
                return self._entry(relpath, path, disk, problem=problem)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._entry(relpath, path, disk, problem=f"cannot stat: {exc.strerror or exc}")
        if stat.S_ISREG(mode):
            return self._entry(relpath, path, disk)
        # A folder is no document (a scan never lists one): the path reads as gone.
        return None if stat.S_ISDIR(mode) else self._entry(relpath, path, disk, problem="not a regular file")

    def _on_disk(self, parts: list[str]) -> str | None:
        """The on-disk relative path whose normalized form is ``parts``: the same spelling when
        it exists (the usual case, and the one that wins a collision), else the one name in
        each folder that normalizes to the part."""
        if os.path.lexists(self.root.joinpath(*parts)):
            return "/".join(parts)
        found: list[str] = []
        for part in parts:
            folder = self.root.joinpath(*found)
            if os.path.lexists(folder / part):
                found.append(part)
                continue
            try:
                with os.scandir(folder) as it:
                    names = [e.name for e in it if identity_of(e.name) == part]
            except OSError:
                return None
            if len(names) != 1:
                return None
            found.append(names[0])
        return "/".join(found)

    @staticmethod
    def _key(path: Path) -> tuple[int, int]:
        st = path.stat()
        return (st.st_dev, st.st_ino)

    def _walk(
        self, folder: Path, prefix: str, visiting: set[tuple[int, int]], *, stat_files: bool = True
    ) -> Iterator[LocalEntry]:
        """``prefix`` is the folder's path under the root as the file system spells it. Without
        ``stat_files`` (a count), a plain regular file comes back as ``_UNSTATED``, unstated."""
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
            disk = prefix + item.name
            # The common case inline, from the DirEntry alone (its type came with the listing):
            # a plain name, a regular file, not a link, included and not excluded; one stat.
            if disk.isascii() and "\\" not in disk:
                relpath = disk
            else:
                relpath = identity_of(disk)
                if (clash := self._clash(relpath, disk)) is not None:
                    yield self._entry(relpath, Path(item.path), disk, problem=clash)
                    continue
            try:
                regular = item.is_file(follow_symlinks=False)
            except OSError as exc:
                yield self._entry(
                    relpath, Path(item.path), disk, problem=f"cannot stat: {exc.strerror or exc}"
                )
                continue
            if regular and self.include.match(relpath) and not self.exclude.match(relpath):
                if not stat_files:
                    yield _UNSTATED
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError as exc:
                    yield self._entry(relpath, Path(item.path), disk, problem=f"cannot stat: {exc.strerror}")
                    continue
                yield LocalEntry(
                    relpath=relpath,
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                    disk=None if relpath is disk else os.fsencode(disk),
                )
            else:
                yield from self._visit(item, relpath, disk, visiting, stat_files)

    def _clash(self, relpath: str, disk: str) -> str | None:
        """A name that normalizes to a path another file on disk has: that file keeps the
        identity (it is what a lookup of the path finds), this one is skipped."""
        if relpath != disk and os.path.lexists(self.root / relpath):
            return f"its normalized name {relpath!r} is the name of another file"
        return None

    def _visit(
        self,
        item: os.DirEntry[str],
        relpath: str,
        disk: str,
        visiting: set[tuple[int, int]],
        stat_files: bool = True,
    ) -> Iterator[LocalEntry]:
        """Everything but a plain regular file: links, folders, FIFOs, sockets, devices. Nothing
        here is opened; every error about one entry is a skip of that entry."""
        path = Path(item.path)
        if self.exclude.match(relpath):
            return
        st = self._stat(item, path)
        if isinstance(st, str):  # why it is skipped
            # The target is unknown (a loop, a dangling link): reported when it could hold
            # documents, as a file the include patterns name or as a folder (no suffix).
            if self.include.match(relpath) or "." not in relpath.rsplit("/", 1)[-1]:
                yield self._entry(relpath, path, disk, problem=st)
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if self.exclude.match(relpath + "/"):
                return
            key = (st.st_dev, st.st_ino)
            if key in visiting:
                yield self._entry(relpath, path, disk, problem="symlink loop: directory already being walked")
                return
            yield from self._walk(path, disk + "/", visiting | {key}, stat_files=stat_files)
        elif self.include.match(relpath):
            if not stat.S_ISREG(mode):
                yield self._entry(relpath, path, disk, problem="not a regular file")
                return
            yield self._entry(relpath, path, disk)

    def _stat(self, item: os.DirEntry[str], path: Path) -> os.stat_result | str:
        """An entry's status (a link's target's), or why it is skipped."""
        try:
            if item.is_symlink():
                # Checked before anything follows the link: following a loop raises ELOOP.
                return self._link_problem(path) or path.stat()
            return item.stat(follow_symlinks=False)
        except OSError as exc:
            return f"cannot stat: {exc.strerror or exc}"

    def _link_problem(self, path: Path) -> str | None:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return f"broken or looping symlink: {exc.__class__.__name__}"
        if target != self.root and self.root not in target.parents:
            return "symlink points outside the source root"
        return None

    def _entry(self, relpath: str, path: Path, disk: str, problem: str | None = None) -> LocalEntry:
        size = mtime_ns = 0
        if problem is None:
            try:
                st = path.stat()
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError as exc:
                problem = f"cannot stat: {exc.strerror}"
        relpath = normalize_relpath(relpath)
        return LocalEntry(
            relpath=relpath, size=size, mtime_ns=mtime_ns, problem=problem, disk=os.fsencode(disk)
        )

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
        disk = entry.disk if isinstance(entry, LocalEntry) else None
        path = self.root / (os.fsdecode(disk) if disk is not None else entry.relpath)
        try:
            # Non-blocking: a file replaced by a FIFO since the listing must not hang the run.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            msg = f"{entry.relpath}: cannot read: {exc.strerror or exc}"
            raise InputError(msg, field="content") from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    msg = f"{entry.relpath}: cannot read: not a regular file"
                    raise InputError(msg, field="content")
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


async def _in_thread(walk: Callable[[], Iterator[LocalEntry]]) -> AsyncIterator[list[LocalEntry]]:
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


_UNSTATED = LocalEntry(relpath="", size=0, mtime_ns=0)


def _walk_in_child() -> bool:
    return sys.platform == "linux" and fork_is_safe()


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _take(iterator: Iterator[LocalEntry], n: int) -> list[LocalEntry]:
    out: list[LocalEntry] = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out
