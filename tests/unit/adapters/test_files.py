import os
from pathlib import Path

import pytest

from headwater.adapters import files
from headwater.adapters.files import FileSource
from headwater.errors import AdapterError, InputError


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
