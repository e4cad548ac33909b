"""Child processes of a run: an iterator walked in a forked child (a local folder listing), and
the guard that makes every child die with its parent.

A no-change re-run of a large folder is the listing and the lookups; walked in a thread, the
listing's Python work (a stat, a path and an entry per file) took the GIL from the thread that
compares and reports, and the two ran one after the other on a two-core machine. In a child
process they run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import sys
from collections.abc import AsyncGenerator, Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any, NoReturn, TypeVar

import msgspec

from headwater.errors import AdapterError

T = TypeVar("T")

_BATCH, _ERROR, _DONE = b"B", b"E", b"D"


def fork_is_safe() -> bool:
    """Not once a library with runtime threads of its own (lancedb) is loaded: a child forked
    while such a thread holds a lock can deadlock. The callers fall back to threads."""
    return hasattr(os, "fork") and "lancedb" not in sys.modules


async def batches_from_child(
    produce: Callable[[], Iterable[T]], item_type: type[T], batch_size: int
) -> AsyncGenerator[list[T], None]:
    """``produce()`` runs in a forked child; its items come back in batches over a pipe.

    The pipe's buffer is the only read-ahead (the child blocks when it is full), so memory stays
    bounded however long the iterator. An error in the child is raised here, as itself; a child
    that dies without finishing raises AdapterError, so a cut-short listing never looks complete.
    """
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(
        target=_produce_into, args=(produce, sending, batch_size), name="headwater-walk", daemon=True
    )
    child.start()
    sending.close()
    decode = msgspec.msgpack.Decoder(list[item_type]).decode  # type: ignore[valid-type]
    try:
        while True:
            try:
                frame = await asyncio.to_thread(receiving.recv_bytes)
            except EOFError:
                await asyncio.to_thread(child.join, 5)  # its pipe closes a moment before it is reaped
                msg = f"the listing process ended without finishing (exit code {child.exitcode})"
                raise AdapterError(msg) from None
            kind, payload = frame[:1], frame[1:]
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise pickle.loads(payload)  # noqa: S301 - our own forked child, over a private pipe
            yield decode(payload)
    finally:
        receiving.close()
        if child.is_alive():  # the consumer stopped early, or failed
            child.kill()
        await asyncio.to_thread(child.join)


def _produce_into(produce: Callable[[], Iterable[Any]], sending: Connection, batch_size: int) -> NoReturn:
    die_with_parent()
    encode = msgspec.msgpack.Encoder().encode
    batch: list[Any] = []
    try:
        for item in produce():
            batch.append(item)
            if len(batch) >= batch_size:
                sending.send_bytes(_BATCH + encode(batch))
                batch = []
        if batch:
            sending.send_bytes(_BATCH + encode(batch))
    except Exception as exc:  # noqa: BLE001 - every error goes back to the parent, as itself
        sending.send_bytes(_ERROR + _pickled(exc))
    else:
        sending.send_bytes(_DONE)
    # Straight out: a normal exit would flush the parent's stdout buffer copied by the fork,
    # printing its pending lines a second time.
    os._exit(0)


def _pickled(exc: Exception) -> bytes:
    with contextlib.suppress(Exception):
        return pickle.dumps(exc)
    return pickle.dumps(AdapterError(f"{type(exc).__name__}: {exc}"))


def die_with_parent() -> None:
    """Child processes must not outlive a killed pipeline (they would hold its pipes open), and
    they leave stop signals to the parent: a terminal's Ctrl-C reaches the whole process group
    (and a service manager's SIGTERM the whole cgroup); a child that died of it would print a
    KeyboardInterrupt traceback of its own, or look like an input that crashed it, while the
    parent is stopping the run cleanly. The parent stops them when it stops. The wakeup fd the
    parent's event loop set for its signal handlers is the parent's, not the child's."""
    import ctypes
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
