from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, env_extra: dict | None = None
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "metatele", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def popen_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "metatele", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_write(path: Path, since_ns: int = 0, timeout: float = 120) -> bool:
    """Wait until `path` exists with a modification time after since_ns (a process wrote it)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_mtime_ns > since_ns:
            return True
        time.sleep(0.02)
    return False
