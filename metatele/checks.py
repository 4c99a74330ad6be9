"""Type and range checks for untrusted values (config files, `--set`, checkpoint metadata), and the limits
they enforce, in one place. Each check returns the value or raises ValueError naming it and its range;
callers turn that into ConfigError or CheckpointError.

JSON and TOML have no tuples and no distinction between 1 and True in some writers, so the checks are
strict: a bool is not an int, a float is not an int (20.7 is refused, not truncated), and "no" is not a
bool.
"""
from __future__ import annotations

import math
import re
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MAX_WIDTH", "MAX_LAYERS", "MAX_HIDDEN", "MAX_SAMPLES", "MAX_META_PARAMETERS", "integer",
           "positive_float", "nonneg_float", "finite_float", "boolean", "choice", "choices", "int_pair", "widths",
           "available_memory"]

MAX_WIDTH = 4096             # units in one layer of a task network
MAX_LAYERS = 16              # weight matrices of a task network
MAX_HIDDEN = 4096            # LSTM size of a meta-optimizer's nets
MAX_SAMPLES = 10**5          # samples per task (regression n) or per mini-batch
MAX_META_PARAMETERS = 10**8  # a meta-optimizer of 10^8 parameters needs ≈ 1.6 GB in float32 with grads and Adam


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """value, if it is an int (not a bool, not a float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def positive_float(name: str, value: Any, hi: float = math.inf) -> float:
    """value as a float, if it is a finite number in (0, hi] (an int is accepted, a bool or a string is not)."""
    what = "a finite positive number" if hi == math.inf else f"a number in (0, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= hi):
        raise ValueError(f"{name} must be {what}, got {value}")
    return float(value)


def nonneg_float(name: str, value: Any) -> float:
    """value as a float, if it is a finite number ≥ 0 (0 typically switches a feature off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def finite_float(name: str, value: Any) -> float:
    """value as a float, if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    """value, if it is exactly True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """value, if it is one of the `allowed` strings."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def choices(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    """value as a tuple, if it is a non-empty list of the `allowed` strings."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list of: {', '.join(allowed)}; got {value!r}")
    return tuple(choice(f"{name} entry", v, allowed) for v in value)


def int_pair(name: str, value: Any, lo: int, hi: int) -> tuple[int, int]:
    """value as (low, high), if it is two integers with lo ≤ low ≤ high ≤ hi."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be [low, high], got {value!r}")
    low, high = (integer(f"{name}'s bounds", v, lo, hi) for v in value)
    if low > high:
        raise ValueError(f"{name} must be [low, high] with low ≤ high, got {list(value)}")
    return low, high


def widths(name: str, value: Any, min_len: int = 3) -> tuple[int, ...]:
    """A task network's layer widths (d0, …, dL) as a tuple: min_len … MAX_LAYERS + 1 integers, each in
    [1, MAX_WIDTH]."""
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= MAX_LAYERS + 1:
        raise ValueError(f"{name} must be a list of {min_len} to {MAX_LAYERS + 1} layer widths, got {value!r}")
    return tuple(integer(f"each of {name}", v, 1, MAX_WIDTH) for v in value)


def available_memory() -> int | None:
    """Bytes this process may still allocate on the CPU: the smaller of MemAvailable and what is left under
    its address-space limit (ulimit -v); None where /proc is not there to say."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    free = int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo)[1]) * 1024
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - int(re.search(r"VmSize:\s+(\d+) kB", status)[1]) * 1024)
    return free
