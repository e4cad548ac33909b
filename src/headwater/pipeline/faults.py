"""Named crash points for the reliability tests: ``HEADWATER_CRASH_AT=name[:n]`` makes the n-th
pass through ``crash_point(name)`` kill the process with SIGKILL, as a power cut or OOM kill would;
``name@key`` fires whenever ``crash_point(name, key)`` passes that key (a poison input).

Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def crash_point(name: str, key: str = "") -> None:
    spec = os.environ.get("HEADWATER_CRASH_AT")
    if not spec:
        return
    if "@" in spec:
        if spec == f"{name}@{key}":
            os.kill(os.getpid(), signal.SIGKILL)
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
