"""The Source contract (ports.Source, and ports.Countable where offered), run on every adapter.

``SOURCES`` lists one URL template per adapter, ``{root}`` being the tree's root. A test puts
objects in the tree through a ``Tree`` for the URL's scheme (``TREES``): for ``file`` it writes
files under a temporary folder. Adding a source is adding its URL, and for a new scheme the
``Tree`` that puts objects where that source lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from headwater import registry
from headwater.errors import HeadwaterError, InputError
from headwater.models import SourceEntry
from headwater.ports import Countable, Source
from tests.contract.urls import url_id
from tests.servers.web_site import SiteTree

SOURCES = [
    "file://{root}",
    "{root}",
    "s3://{root}",
    "gs://{root}",
    "az://{root}",
    "http://{root}/sitemap.xml",
]


class Tree(Protocol):
    """Objects where a source lists them."""

    url: str

    def put(self, relpath: str, data: bytes) -> None: ...

    def remove(self, relpath: str) -> None: ...

    def put_outside(self, name: str, data: bytes) -> str:
        """An object beside the root, not under it; returns the relpath that climbs to it."""
        ...

    def remove_root(self) -> None:
        """The root itself gone: listing it must fail, not come back empty."""
        ...


class LocalTree:
    def __init__(self, template: str, base: Path) -> None:
        self.root = base / "root"
        self.root.mkdir()
        self.url = template.format(root=self.root)

    def put(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def remove(self, relpath: str) -> None:
        (self.root / relpath).unlink()

    def put_outside(self, name: str, data: bytes) -> str:
        (self.root.parent / name).write_bytes(data)
        return f"../{name}"

    def remove_root(self) -> None:
        shutil.rmtree(self.root)


class ObjectTree:
    """A bucket (container) of its own on the test server, the tree under its ``root/`` prefix;
    ``fs`` is the server's fsspec client."""

    def __init__(self, template: str, fs: Any) -> None:
        self.fs = fs
        self.bucket = f"b{uuid.uuid4().hex[:12]}"
        fs.mkdir(self.bucket)
        self.url = template.format(root=f"{self.bucket}/root")

    def put(self, relpath: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.bucket}/root/{relpath}", data)

    def put_many(self, objects: dict[str, bytes]) -> None:
        self.fs.pipe({f"{self.bucket}/root/{k}": v for k, v in objects.items()})

    def remove(self, relpath: str) -> None:
        self.fs.rm_file(f"{self.bucket}/root/{relpath}")

    def put_outside(self, name: str, data: bytes) -> str:
        self.fs.pipe_file(f"{self.bucket}/{name}", data)
        return f"../{name}"

    def remove_root(self) -> None:
        self.fs.rm(self.bucket, recursive=True)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rmdir(self.bucket)


def _s3(request: pytest.FixtureRequest) -> Any:
    import s3fs

    server = request.getfixturevalue("s3_server")
    return s3fs.S3FileSystem(endpoint_url=server.endpoint, use_listings_cache=False, skip_instance_cache=True)


def _server_fs(request: pytest.FixtureRequest, server: str) -> Any:
    return request.getfixturevalue(server).filesystem()


# scheme → (template, folder, request) → Tree
TREES: dict[str, Callable[[str, Path, pytest.FixtureRequest], Tree]] = {
    "file": lambda template, folder, _: LocalTree(template, folder),
    "s3": lambda template, _, request: ObjectTree(template, _s3(request)),
    "gs": lambda template, _, request: ObjectTree(template, _server_fs(request, "gcs_server")),
    "az": lambda template, _, request: ObjectTree(template, _server_fs(request, "azure_server")),
    "http": lambda template, folder, _: SiteTree(template, folder),
}


@pytest.fixture(params=SOURCES, ids=url_id)
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Tree:
    template: str = request.param
    return TREES[registry.scheme_of(template)](template, tmp_path, request)


def source(tree: Tree, include: list[str] | None = None, exclude: list[str] | None = None) -> Source:
    """As bootstrap.make_source makes it: the URL plus the include and exclude settings."""
    made: Source = registry.create("source", tree.url, include=include, exclude=exclude)
    return made


async def pages(src: Source) -> list[list[SourceEntry]]:
    return [page async for page in src.scan()]


async def listed(src: Source) -> dict[str, SourceEntry]:
    entries = [e for page in await pages(src) for e in page]
    by_path = {e.relpath: e for e in entries}
    assert len(by_path) == len(entries), "an entry listed twice"
    return by_path


def seen(entry: SourceEntry) -> tuple[object, ...]:
    """What the port shows of an entry (an adapter's subclass may carry more, for its own reads)."""
    return tuple(getattr(entry, field) for field in SourceEntry.__struct_fields__)


def put_all(tree: Tree, objects: dict[str, bytes]) -> None:
    if isinstance(tree, ObjectTree):  # one concurrent upload: 1,500 puts one by one take a while
        tree.put_many(objects)
        return
    for relpath, data in objects.items():
        tree.put(relpath, data)


OBJECTS = {
    "a.md": b"# A\n",
    "b.txt": b"bee " * 100,
    "empty.md": b"",
    "binary.pdf": bytes(range(256)) * 4,
    "sub/c.md": b"sea",
    "sub/deeper/d.md": b"dee",
    "zeta ü 日本.md": b"unicode name",
}


async def test_scan_lists_every_object_once_with_its_size_and_mtime(tree: Tree) -> None:
    objects = {**OBJECTS, **{f"many/{i:04d}.md": b"x" * (i % 7) for i in range(1500)}}
    started = time.time_ns()
    put_all(tree, objects)
    src = source(tree)
    assert isinstance(src, Source)
    assert isinstance(src.uri, str) and src.uri
    got = await pages(src)
    assert all(isinstance(page, list) and page for page in got)
    entries = await listed(src)
    assert set(entries) == set(objects)
    for relpath, entry in entries.items():
        assert isinstance(entry, SourceEntry)
        assert (entry.size, entry.problem) == (len(objects[relpath]), None), relpath
        if isinstance(tree, LocalTree):  # a file's mtime; an object's stamp digests its version tag
            assert started - 5 * 10**9 <= entry.mtime_ns <= time.time_ns() + 5 * 10**9, relpath
        assert 0 <= entry.mtime_ns < 2**63, relpath  # what the metadata stores keep (a signed 64-bit)


async def test_scan_order_is_deterministic(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    first = [e.relpath for page in await pages(source(tree)) for e in page]
    again = [e.relpath for page in await pages(source(tree)) for e in page]
    assert first == again and len(first) == len(OBJECTS)


async def test_an_empty_tree_lists_nothing(tree: Tree) -> None:
    assert await listed(source(tree)) == {}


async def test_a_changed_object_lists_its_new_size(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    before = (await listed(source(tree)))["a.md"]
    tree.put("a.md", b"# A, longer now\n")
    after = (await listed(source(tree)))["a.md"]
    assert after.size == len(b"# A, longer now\n") != before.size
    if isinstance(tree, LocalTree):
        assert after.mtime_ns >= before.mtime_ns


async def test_an_object_rewritten_with_the_same_size_gets_a_new_version_stamp(tree: Tree) -> None:
    """(size, mtime_ns) is what a re-run compares: a same-size rewrite must change the stamp, or
    the new bytes are never read. An object store's stamp is its version tag (ETag, generation)."""
    put_all(tree, OBJECTS)
    src = source(tree)
    before = (await listed(src))["sub/c.md"]
    time.sleep(0.02)  # a file system's mtime ticks (a few ms)
    tree.put("sub/c.md", b"SEA")
    after = (await listed(src))["sub/c.md"]
    assert after.size == before.size
    assert after.mtime_ns != before.mtime_ns
    assert (await src.lookup(["sub/c.md"]))[0].mtime_ns == after.mtime_ns
    assert (await listed(src))["a.md"] == (await listed(src))["a.md"]  # stable while unchanged


async def test_include_and_exclude_choose_what_scan_and_lookup_see(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    put_all(tree, {"drafts/x.md": b"x", "sub/drafts/y.md": b"y", ".hidden.md": b"h", "sub/.h/z.md": b"z"})
    src = source(tree, include=["**/*.md", "**/*.txt"], exclude=["**/drafts/**", "**/.*", "**/.*/**"])
    wanted = {"a.md", "b.txt", "empty.md", "sub/c.md", "sub/deeper/d.md", "zeta ü 日本.md"}
    entries = await listed(src)
    assert set(entries) == wanted
    asked = ["a.md", "binary.pdf", "drafts/x.md", "sub/drafts/y.md", ".hidden.md", "sub/.h/z.md", "sub/c.md"]
    found = await src.lookup(asked)
    assert sorted(map(seen, found)) == [seen(entries["a.md"]), seen(entries["sub/c.md"])]


async def test_lookup_lists_present_paths_as_scan_does_and_leaves_out_the_rest(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    outside = tree.put_outside("secret.md", b"not under the root")
    src = source(tree)
    entries = await listed(src)
    present = ["sub/deeper/d.md", "zeta ü 日本.md", "a.md", "empty.md"]
    absent = ["missing.md", "sub/missing.md", outside, "nowhere/a.md", "a.md/x"]
    found = await src.lookup(absent[:2] + present + absent[2:])
    assert sorted(map(seen, found)) == sorted(seen(entries[p]) for p in present)
    assert await src.lookup([]) == []
    assert await src.lookup(absent) == []
    assert not any("secret" in p for p in entries)


async def test_lookup_of_a_folder_leaves_it_out_as_scan_does(tree: Tree) -> None:
    """A folder is not an entry of the listing, only what is in it. (A file replaced by a folder
    of the same name: looked up, it must read as gone, so its document is deleted.)"""
    put_all(tree, OBJECTS)
    src = source(tree)
    assert await src.lookup(["sub", "sub/deeper"]) == []


async def test_read_returns_the_whole_object_and_refuses_one_over_the_limit(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    src = source(tree)
    entries = await listed(src)
    for relpath, data in OBJECTS.items():
        assert await src.read(entries[relpath], max_bytes=len(data)) == data, relpath
        assert await src.read(entries[relpath], max_bytes=10**9) == data, relpath
    with pytest.raises(InputError):
        await src.read(entries["binary.pdf"], max_bytes=len(OBJECTS["binary.pdf"]) - 1)
    with pytest.raises(InputError):
        await src.read(entries["sub/c.md"], max_bytes=0)


async def test_read_of_an_object_gone_since_the_listing_is_an_input_error(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    src = source(tree)
    entries = await listed(src)
    tree.remove("sub/c.md")
    with pytest.raises(InputError):
        await src.read(entries["sub/c.md"], max_bytes=1000)


async def test_read_gives_the_object_as_it_is_now_within_the_limit(tree: Tree) -> None:
    """Whole object: one rewritten since the listing is read as it is, not cut to the listed size."""
    put_all(tree, OBJECTS)
    src = source(tree)
    entries = await listed(src)
    tree.put("a.md", b"# A grew since it was listed\n")
    tree.put("b.txt", b"shrank")
    assert await src.read(entries["a.md"], max_bytes=1000) == b"# A grew since it was listed\n"
    assert await src.read(entries["b.txt"], max_bytes=1000) == b"shrank"
    tree.put("a.md", b"x" * 2000)
    with pytest.raises(InputError):
        await src.read(entries["a.md"], max_bytes=1000)


async def test_read_many_keeps_order_with_each_error_in_its_place(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    src = source(tree)
    entries = await listed(src)
    tree.remove("sub/c.md")
    order = ["b.txt", "a.md", "sub/c.md", "empty.md", "binary.pdf", "a.md", "zeta ü 日本.md"]
    results = await src.read_many([entries[p] for p in order], max_bytes=500)
    assert len(results) == len(order)
    for relpath, result in zip(order, results, strict=True):
        if relpath in ("sub/c.md", "binary.pdf"):  # gone; 1,024 bytes
            assert isinstance(result, InputError), (relpath, result)
        else:
            assert result == OBJECTS[relpath], relpath
    assert await src.read_many([], max_bytes=500) == []


async def test_a_listing_that_fails_raises_instead_of_looking_empty(tree: Tree) -> None:
    """An empty listing would make every document look deleted, and an empty lookup every
    looked-up one."""
    put_all(tree, OBJECTS)
    src = source(tree)
    tree.remove_root()
    with pytest.raises(HeadwaterError):
        await pages(src)
    with pytest.raises(HeadwaterError):
        await src.lookup(["a.md"])


async def test_a_scan_abandoned_after_its_first_page_ends_cleanly(tree: Tree) -> None:
    put_all(tree, {f"many/{i:04d}.md": b"x" for i in range(3000)})
    src = source(tree)
    scan = src.scan()
    assert await asyncio.wait_for(anext(scan), timeout=60)
    aclose = getattr(scan, "aclose", None)  # an async generator's (the port promises an iterator)
    if aclose is not None:
        await asyncio.wait_for(aclose(), timeout=10)
    # and the source lists in full again afterwards
    assert len(await asyncio.wait_for(listed(src), timeout=60)) == 3000


async def test_count_if_offered_is_what_scan_lists(tree: Tree) -> None:
    put_all(tree, OBJECTS)
    put_all(tree, {"drafts/x.md": b"x", "many/1.md": b"1", "many/2.txt": b"2"})
    for include, exclude in ((None, None), (["**/*.md"], ["drafts/**"])):
        src = source(tree, include=include, exclude=exclude)
        if not isinstance(src, Countable):
            pytest.skip(f"{type(src).__name__} does not count ahead (ports.Countable is optional)")
        assert await src.count() == len(await listed(src)), (include, exclude)
