import asyncio
import contextlib
import os
import socket
import threading
import unicodedata
from pathlib import Path

import pytest

from headwater.adapters import files
from headwater.adapters.files import FileSource
from headwater.errors import AdapterError, InputError
from headwater.models import make_doc_id, normalize_relpath


@pytest.fixture(autouse=True, params=["child", "thread"])
def walk_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every listing test runs both ways: walked in a forked child (Linux, the CLI) and in a
    thread (elsewhere, and in a process that already loaded lancedb)."""
    monkeypatch.setattr(files, "_walk_in_child", lambda: request.param == "child")
    return str(request.param)


async def entries(source: FileSource) -> dict[str, str | None]:
    return {e.relpath: e.problem async for page in source.scan() for e in page}


async def test_include_exclude_and_sorted_recursive_walk(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("a.md", "b/c.txt", "b/skip.bin", ".hidden.md", "z name ü.md"):
        (tmp_path / name).write_text("x")
    source = FileSource(str(tmp_path), include=["**/*.md", "**/*.txt"], exclude=["**/.*"])
    assert list(await entries(source)) == ["a.md", "b/c.txt", "z name ü.md"]


async def test_symlinks_outside_the_root_dangling_or_looping_are_skipped(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("secret")
    (root / "ok.md").write_text("ok")
    os.symlink(outside / "secret.md", root / "escape.md")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "missing.md", root / "dangling.md")
    os.symlink(root, root / "loop")
    os.symlink(root / "ok.md", root / "alias.md")
    found = await entries(FileSource(str(root), include=["**/*.md"]))
    assert found["ok.md"] is None and found["alias.md"] is None
    assert found["escape.md"] == "symlink points outside the source root"
    assert "broken or looping" in (found["dangling.md"] or "")
    assert not any(path.startswith("escape_dir/") for path in found)
    assert not any(path.startswith("loop/loop") for path in found)


async def test_read_limits_and_errors(tmp_path: Path) -> None:
    (tmp_path / "big.md").write_text("x" * 100)
    source = FileSource(str(tmp_path), include=["**/*.md"])
    (entry,) = [e async for page in source.scan() for e in page]
    assert await source.read(entry, 100) == b"x" * 100
    with pytest.raises(InputError, match="over the limit of 99 bytes"):
        await source.read(entry, 99)
    (tmp_path / "big.md").unlink()
    with pytest.raises(InputError, match=r"big\.md: cannot read"):
        await source.read(entry, 100)


async def test_read_many_keeps_order_and_puts_each_error_in_its_place(tmp_path: Path) -> None:
    for name, text in (("a.md", "aa"), ("b.md", "b" * 50), ("c.md", "c")):
        (tmp_path / name).write_text(text)
    source = FileSource(str(tmp_path), include=["**/*.md"])
    listed = [e async for page in source.scan() for e in page]
    (tmp_path / "c.md").unlink()
    a, b, c = await source.read_many(listed, 10)
    assert a == b"aa"
    assert isinstance(b, InputError) and "b.md: 11+ bytes is over the limit of 10 bytes" in str(b)
    assert isinstance(c, InputError) and "c.md: cannot read" in str(c)


async def test_a_large_listing_comes_in_pages_in_walk_order(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(1500):
            (tmp_path / folder / f"{i:04d}.md").write_text("x")
    pages = [page async for page in FileSource(str(tmp_path)).scan()]
    assert [len(p) for p in pages] == [1024, 1024, 952]
    listed = [e.relpath for page in pages for e in page]
    assert listed == [f"{folder}/{i:04d}.md" for folder in ("a", "b") for i in range(1500)]
    assert {(e.size, e.mtime_ns > 0) for page in pages for e in page} == {(1, True)}


async def test_an_empty_folder_lists_no_pages(tmp_path: Path) -> None:
    assert [page async for page in FileSource(str(tmp_path)).scan()] == []


def folder_failing_to_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError) -> FileSource:
    """``sub/a.md`` and ``b.md``, where listing ``sub`` raises ``error``."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("x")
    (tmp_path / "b.md").write_text("x")
    real_scandir = os.scandir

    def scandir(path: Path) -> "os._ScandirIterator[str]":
        if Path(path).name == "sub":
            raise error
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    return FileSource(str(tmp_path))


async def test_a_folder_that_cannot_be_listed_stops_the_listing_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping it would make every document under it look deleted."""
    source = folder_failing_to_list(tmp_path, monkeypatch, PermissionError(13, "Permission denied"))
    with pytest.raises(AdapterError, match=r"cannot list .*sub: Permission denied"):
        await entries(source)


async def test_a_folder_removed_during_the_walk_is_simply_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = folder_failing_to_list(tmp_path, monkeypatch, FileNotFoundError(2, "No such file or directory"))
    assert await entries(source) == {"b.md": None}


async def test_links_that_loop_at_the_root_and_deeper_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """Two links pointing at each other made ``DirEntry.is_dir()`` raise ELOOP: the run stopped."""
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "good.md").write_text("x")
    (tmp_path / "deep" / "er" / "fine.md").write_text("x")
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    os.symlink("y.md", tmp_path / "deep" / "er" / "x.md")
    os.symlink("x.md", tmp_path / "deep" / "er" / "y.md")
    os.symlink("self", tmp_path / "deep" / "self")
    found = await entries(FileSource(str(tmp_path), include=["**/*.md"]))
    assert found["good.md"] is None and found["deep/er/fine.md"] is None
    for looping in ("loop_a", "loop_b", "deep/er/x.md", "deep/er/y.md", "deep/self"):
        assert (found[looping] or "").startswith("broken or looping symlink"), (looping, found)


async def test_a_folder_link_to_its_own_parent_is_a_loop_skipped_once(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "doc.md").write_text("x")
    os.symlink("..", tmp_path / "a" / "b" / "up")
    os.symlink(".", tmp_path / "a" / "here")
    found = await entries(FileSource(str(tmp_path)))
    assert found == {
        "a/b/doc.md": None,
        "a/b/up": "symlink loop: directory already being walked",
        "a/here": "symlink loop: directory already being walked",
    }


async def test_a_fifo_and_a_socket_are_skipped_and_never_opened(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("x")
    os.mkfifo(tmp_path / "fifo.md")  # opening it would block until a writer comes: never
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.md"))
        found = await asyncio.wait_for(entries(FileSource(str(tmp_path))), 30)
    assert found == {"fifo.md": "not a regular file", "good.md": None, "sock.md": "not a regular file"}


async def test_a_file_replaced_by_a_fifo_after_the_listing_fails_its_read_without_blocking(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.md").write_text("x")
    source = FileSource(str(tmp_path))
    (entry,) = [e async for page in source.scan() for e in page]
    (tmp_path / "a.md").unlink()
    os.mkfifo(tmp_path / "a.md")

    def unblock() -> None:  # a reader stuck in open() gets a writer after 3 s (the test then fails)
        with contextlib.suppress(OSError):
            fd = os.open(tmp_path / "a.md", os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"fifo")
            os.close(fd)

    timer = threading.Timer(3, unblock)
    timer.start()
    try:
        (result,) = await source.read_many([entry], 100)
    finally:
        timer.cancel()
    assert isinstance(result, InputError) and "a.md: cannot read: not a regular file" in str(result)


ODD_NAMES = {  # on disk (bytes) -> identity
    b"back\\slash.md": "back%5Cslash.md",
    unicodedata.normalize("NFD", "café.md").encode(): "café.md",
    b"latin1 \xe9t\xe9.md": "latin1 %E9t%E9.md",
    b"dir\xff/inside.md": "dir%FF/inside.md",
    unicodedata.normalize("NFD", "résumé/ü.md").encode(): "résumé/ü.md",
}


def write_odd_names(root: Path) -> None:
    for disk in ODD_NAMES:
        path = os.path.join(os.fsencode(root), disk)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"content of " + disk)


async def test_odd_names_are_read_under_their_on_disk_name_and_known_by_their_normalized_one(
    tmp_path: Path,
) -> None:
    """Before, they were listed under the normalized name, which cannot be opened (and bytes that
    are not UTF-8 stopped the listing in the child: surrogates cannot be encoded)."""
    write_odd_names(tmp_path)
    (tmp_path / "plain.md").write_text("plain")
    source = FileSource(str(tmp_path))
    listed = {e.relpath: e async for page in source.scan() for e in page}
    assert set(listed) == {*ODD_NAMES.values(), "plain.md"}
    assert all(e.problem is None for e in listed.values())
    assert all(normalize_relpath(r) == r and make_doc_id(r) for r in listed)  # identities are stable
    by_identity = {identity: disk for disk, identity in ODD_NAMES.items()}
    contents = await source.read_many(list(listed.values()), 1000)
    for (relpath, entry), data in zip(listed.items(), contents, strict=True):
        expected = b"plain" if relpath == "plain.md" else b"content of " + by_identity[relpath]
        assert data == expected, (relpath, entry)
    # A lookup by identity (the stream worker, a DLQ replay) finds the same files.
    looked_up = await source.lookup(sorted(listed))
    assert [e.relpath for e in looked_up] == sorted(listed)
    assert await source.read_many(looked_up, 1000) == [
        b"plain" if e.relpath == "plain.md" else b"content of " + by_identity[e.relpath] for e in looked_up
    ]


async def test_a_name_that_normalizes_to_another_files_name_is_skipped(tmp_path: Path) -> None:
    (tmp_path / unicodedata.normalize("NFC", "café.md")).write_text("nfc")
    (tmp_path / unicodedata.normalize("NFD", "café.md")).write_text("nfd")
    (tmp_path / "a%5Cb.md").write_text("literal")
    (tmp_path / "a\\b.md").write_text("backslash")
    source = FileSource(str(tmp_path))
    found = [(e.relpath, e.problem) async for page in source.scan() for e in page]
    assert sorted(found, key=lambda item: (item[0], item[1] or "")) == [
        ("a%5Cb.md", None),
        ("a%5Cb.md", "its normalized name 'a%5Cb.md' is the name of another file"),
        ("café.md", None),
        ("café.md", "its normalized name 'café.md' is the name of another file"),
    ]
    kept = [e for page in [p async for p in source.scan()] for e in page if e.problem is None]
    assert await source.read_many(kept, 100) == [b"literal", b"nfc"]
    assert await source.read_many(await source.lookup(["café.md", "a%5Cb.md"]), 100) == [b"nfc", b"literal"]
