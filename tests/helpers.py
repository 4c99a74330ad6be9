"""Running the program as a user would, and waiting for events (a file written, a server answering) with a
generous bound that only guards against hangs: no pass condition depends on how fast the machine is."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANG = 900.0  # seconds: a wait this long means a hang, on any machine however busy


def run_cli(*args: str, cwd: Path | None = None, timeout: float = HANG, env_extra: dict | None = None
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "metatele", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def popen_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "metatele", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen | None = None, poll: float = 0.005) -> bool:
    """Poll `ready()` until it is true (→ True) or `proc` has exited without it (→ False). Only a hang (HANG
    seconds) raises TimeoutError."""
    hang = time.monotonic() + HANG
    while not ready():
        if proc is not None and proc.poll() is not None:
            return ready()
        if time.monotonic() > hang:
            raise TimeoutError(f"no event after {HANG:g} s: hung")
        time.sleep(poll)
    return True


def wait_for_write(path: Path, since_ns: int = 0, proc: subprocess.Popen | None = None) -> bool:
    """Wait until `path` exists with a modification time after since_ns (a process wrote it); False if `proc`
    exits first."""
    return wait_for(lambda: path.exists() and path.stat().st_mtime_ns > since_ns, proc, poll=0.02)
