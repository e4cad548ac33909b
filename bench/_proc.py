"""Run one benchmark child process and measure it: wall time, CPU time and peak RSS of its tree.

Why not ``resource.getrusage(RUSAGE_CHILDREN)``: its max RSS is a maximum over *all* children
ever reaped, so it cannot separate workloads. Why not only ``wait4``'s ru_maxrss: headwater starts a
forkserver and worker processes, and a tree's memory is the sum over its processes. So we sample
the whole tree (psutil, every 50 ms) and also keep the kernel's per-process maximum from ``wait4``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

MB = 1024 * 1024


@dataclass
class Measured:
    """What one child process cost. ``peak_rss_mb`` sums the tree; ``maxrss_mb`` is its largest process."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    maxrss_mb: float
    timed_out: bool


class TreeSampler:
    """Samples RSS (summed) and CPU time (per pid, last seen) of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)


def run_measured(
    cmd: list[str], *, env: dict[str, str], stdout: Path, stderr: Path, timeout: float, interval: float = 0.05
) -> Measured:
    """Start ``cmd``, sample its tree until it exits (or is killed at ``timeout``), reap it with wait4."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        timed_out = False
        while True:
            sampler.sample()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, 9)
            time.sleep(interval)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
    cpu = max(usage.ru_utime + usage.ru_stime, sum(sampler.cpu.values()))
    maxrss = usage.ru_maxrss * 1024 / MB
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=max(sampler.peak_rss / MB, maxrss),
        maxrss_mb=maxrss,
        timed_out=timed_out,
    )


def last_json_line(path: Path) -> dict[str, Any]:
    """The final JSON object a child printed (headwater's RunCompleted; the LangChain worker's result)."""
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        return {}
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def headwater_cmd(*args: str) -> list[str]:
    """Call the console script installed with this Python, as a user of its environment would.
    The one beside the interpreter comes first: the first on PATH can be a version manager's
    shim (pyenv's runs bash and ``pyenv exec``, ~0.05 s, before Python starts)."""
    beside = Path(sys.executable).parent / "headwater"
    exe = str(beside) if beside.is_file() else shutil.which("headwater")
    if exe:
        return [exe, *args]
    return [sys.executable, "-c", "from headwater.cli import main; main()", *args]


def child_env(embedder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["HEADWATER_EMBEDDER"] = embedder
    env["HF_HUB_OFFLINE"] = "1"
    return env
