"""A backfill shortens the GIL switch interval while its stages overlap, and always puts it back."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_signal_pipeline import FlakyOffline, run, write_jsonl

from headwater.pipeline import signals
from headwater.pipeline.gil import HANDOVER_SECONDS, quick_gil_handover

sys.path.insert(0, str(Path(__file__).parents[1] / "stages"))
from signal_reference import generate


@pytest.fixture(autouse=True)
def default_interval() -> Any:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_nested_and_concurrent_holders_restore_the_interval_found_before_the_first() -> None:
    with quick_gil_handover():
        assert sys.getswitchinterval() == pytest.approx(HANDOVER_SECONDS)
        seen = []
        other = threading.Thread(target=lambda: seen.append(_held_in_thread()))
        other.start()
        other.join()
        assert seen == [pytest.approx(HANDOVER_SECONDS)]
        assert sys.getswitchinterval() == pytest.approx(HANDOVER_SECONDS)  # (the other run ended)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    with pytest.raises(RuntimeError), quick_gil_handover():
        raise RuntimeError
    assert sys.getswitchinterval() == pytest.approx(0.005)
    sys.setswitchinterval(0.0001)  # (a process that already runs shorter keeps its own)
    with quick_gil_handover():
        assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)


def _held_in_thread() -> float:
    with quick_gil_handover():
        return sys.getswitchinterval()


@pytest.mark.parametrize("fails", [False, True])
def test_a_backfill_computes_under_the_short_interval_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(inputs / "events.jsonl", generate(seed=3, n=300), {})
    seen: list[float] = []
    engine = signals.SignalPipeline._engine

    def watched(self: Any, *args: Any) -> Any:
        seen.append(sys.getswitchinterval())
        return engine(self, *args)

    monkeypatch.setattr(signals.SignalPipeline, "_engine", watched)
    offline = FlakyOffline(str(tmp_path / "offline"), "000001") if fails else None
    if fails:
        with pytest.raises(OSError, match="disk went away"):
            asyncio.run(run(tmp_path / "home", inputs, offline=offline, batch=100))
    else:
        asyncio.run(run(tmp_path / "home", inputs, batch=100))
    assert seen and all(s == pytest.approx(HANDOVER_SECONDS) for s in seen)
    assert sys.getswitchinterval() == pytest.approx(0.005)
