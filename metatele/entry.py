"""The `metatele` program (console script and `python -m metatele`).

Importing torch and the rest takes seconds, and Python's default SIGINT handler would turn a Ctrl-C during
those imports (or during interpreter shutdown) into a traceback. So this module installs its own handler
first, before importing anything heavy: during imports and shutdown Ctrl-C prints one line and exits 130;
while a command runs, `metatele.cli.main` turns it into one line and 130 (and `train` stops gracefully).
Import this module only as the program's entry point: the handler is process-wide.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]


def _exit_now(signum: int, frame: FrameType | None) -> None:
    """SIGINT while nothing can be saved (imports, shutdown): one line, exit 130."""
    os.write(2, b"metatele: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _exit_now)
# OpenMP threads that spin while they wait make every torch op cost a scheduler time slice on a busy machine
# (31× slower with 2 threads; docs/threads.md). Sleeping instead must be asked before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from metatele import cli  # noqa: E402  (deliberately after the handler: this import loads torch)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with Python's SIGINT handling (KeyboardInterrupt, which cli.main turns into one
    line and exit 130), then restore the exit-at-once handler for the interpreter's shutdown."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return cli.main(argv)
    except KeyboardInterrupt:  # in the instants around cli.main's own handling
        os.write(2, b"metatele: interrupted\n")
        return 130
    finally:
        signal.signal(signal.SIGINT, _exit_now)
        for stream in (sys.stdout, sys.stderr):  # what is buffered must not be lost to os._exit
            with contextlib.suppress(Exception):
                stream.flush()
