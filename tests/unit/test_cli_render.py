"""``--json`` output: one event a line, in order, each line out within a moment of its event."""

import asyncio
import io
import sys
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from headwater.cli import render as cli_render
from headwater.events import DocumentSkipped, RunCompleted, decode_event


class _Stdout:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.writes = 0
        write = self.buffer.write

        def counted(data: bytes) -> int:
            self.writes += 1
            return write(data)

        self.buffer.write = counted  # type: ignore[method-assign]


def skipped(i: int) -> DocumentSkipped:
    return DocumentSkipped(run_id="r", doc_id=f"d{i}", uri=f"{i}.md", reason="unchanged")


async def test_lines_go_out_in_blocks_and_within_the_flush_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = _Stdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    seen_while_waiting: list[int] = []

    async def events() -> AsyncIterator[object]:
        for i in range(10_000):
            yield skipped(i)
        await asyncio.sleep(cli_render.JSON_FLUSH_SECONDS * 4)  # a long embedding call, say
        seen_while_waiting.append(stdout.buffer.getvalue().count(b"\n"))
        yield RunCompleted(run_id="r")

    last = await cli_render.render_events(events(), json_lines=True, console=Console(file=io.StringIO()))
    lines = stdout.buffer.getvalue().splitlines()
    assert isinstance(last, RunCompleted)
    assert seen_while_waiting == [10_000]  # everything before the pause was already out
    assert [decode_event(line) for line in lines] == [*(skipped(i) for i in range(10_000)), last]
    assert stdout.writes <= 10_000 // cli_render.JSON_FLUSH_LINES + 2
