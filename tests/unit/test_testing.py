"""The shipped test doubles keep the contracts of the ports they stand in for."""

from __future__ import annotations

from headwater.models import DeadLetter
from headwater.ports import DeadLetters
from headwater.testing import MemoryDeadLetters


def letter(ref: str) -> DeadLetter:
    return DeadLetter(
        id=0, kind="signal", input_ref=ref, source="events.jsonl", stage="decode", error_type="InputError",
        message="bad", traceback="", attempts=1, created_at="",
    )  # fmt: skip


async def test_memory_dead_letters_number_list_and_replay_like_the_store() -> None:
    dlq = MemoryDeadLetters()
    assert isinstance(dlq, DeadLetters)
    assert [await dlq.add(letter(ref)) for ref in ("line 1", "line 2", "line 3")] == [1, 2, 3]
    await dlq.mark_replayed([2])
    assert [lt.input_ref for lt in await dlq.list()] == ["line 1", "line 3"]
    assert len(await dlq.list(include_replayed=True)) == 3
    assert len(await dlq.list(limit=1)) == 1
    got = await dlq.get(3)
    assert got is not None and got.input_ref == "line 3"
    assert await dlq.get(4) is None and await dlq.get(0) is None
