"""Graceful stopping: the first SIGINT or SIGTERM asks the running loop to stop after its current batch
(it says so at once on stderr, then saves); a second one aborts at once (KeyboardInterrupt). And worker
processes that leave Ctrl-C to their parent (`sigint_ignored_by_children`)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["StopFlag", "stop_on_signals", "sigint_ignored_by_children"]


class StopFlag:
    """Callable: True once a stop was requested; `signum` says which signal asked."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        os.write(2, b"metatele: stopping after the current batch (Ctrl-C again aborts at once)\n")


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Install the handlers for the duration of the block (only in the main thread, where Python allows it)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.signal(s, flag.handle) for s in signums}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def sigint_ignored_by_children() -> Iterator[None]:
    """Start worker processes inside this block: they inherit SIGINT ignored (Python keeps an inherited
    "ignore"), so Ctrl-C, which the terminal sends to the whole process group, is handled by this process
    alone (one line, no traceback from each worker). The block should only start processes: a SIGINT
    arriving during it is ignored here too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
