"""An iterator walked in a forked child: its items, its errors and its death reach the parent."""

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

import pytest

from headwater.child_processes import batches_from_child
from headwater.errors import AdapterError
from headwater.models import SourceEntry


def entries(n: int) -> Iterator[SourceEntry]:
    for i in range(n):
        yield SourceEntry(relpath=f"{i}.md", size=i, mtime_ns=i * 10)


async def collect(produce: Callable[[], Iterable[SourceEntry]]) -> list[list[SourceEntry]]:
    return [b async for b in batches_from_child(produce, SourceEntry, 4)]


async def test_items_arrive_in_order_in_batches() -> None:
    batches = await collect(lambda: entries(10))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [e for b in batches for e in b] == list(entries(10))
    assert await collect(lambda: entries(0)) == []


async def test_an_error_in_the_child_is_raised_in_the_parent_as_itself() -> None:
    def failing() -> Iterator[SourceEntry]:
        yield from entries(5)
        raise PermissionError(13, "Permission denied", "/root/secret")

    with pytest.raises(PermissionError) as raised:
        await collect(failing)
    assert (raised.value.errno, raised.value.filename) == (13, "/root/secret")


async def test_a_child_that_dies_mid_listing_is_an_error_not_a_short_listing() -> None:
    def dying() -> Iterator[SourceEntry]:
        yield from entries(5)
        os._exit(3)

    seen: list[SourceEntry] = []
    with pytest.raises(AdapterError, match=r"ended without finishing \(exit code 3\)"):
        async for batch in batches_from_child(dying, SourceEntry, 4):
            seen += batch
    assert seen == list(entries(4))  # the full batch arrived; the partial one died with the child


async def test_a_consumer_that_stops_early_leaves_no_child_behind() -> None:
    listing = batches_from_child(lambda: entries(100_000), SourceEntry, 10)
    first = await anext(listing)
    await listing.aclose()
    assert len(first) == 10
    assert multiprocessing.active_children() == []
