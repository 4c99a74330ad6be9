"""Tuned learning rates kept between runs of `metatele compare`, in `FILE` in its output folder.

Each entry maps a key to the lr that `compare.tune` chose for it. The key is the problem (the task family's
`to_dict()`, the validation seeds, dtype, device and the metatele version), the horizon (steps), the lr grid
(its values) and the baseline (its name and its other hyper-parameters). A later run with the same key reuses
the lr instead of tuning again; any other key misses and is tuned and added.

The file is untrusted input. It is used only if it is JSON of the expected form: every lr a finite positive
member of its grid, no key twice, no number that is not finite. Otherwise it is ignored with one warning and
rewritten. It is written atomically through `metatele.io`.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metatele._version import __version__
from metatele.errors import MetateleError
from metatele.io import atomic_write_text, json_text, regular_file
from metatele.methods.base import Method
from metatele.tasks.base import TaskBatch, TaskFamily

__all__ = ["FILE", "FORMAT", "MAX_BYTES", "InvalidTunedLRs", "problem_key", "TunedLRs"]

FILE = "tuned_lrs.json"
FORMAT = "metatele tuned learning rates v1"
MAX_BYTES = 1 << 22                  # a larger file is not one this module wrote for a few problems
KEY_FIELDS = ("problem", "method", "steps", "grid")


class InvalidTunedLRs(MetateleError, ValueError):
    """The file of tuned learning rates is not one this module wrote (it is then ignored and rewritten)."""


def _json_plain(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so that keys compare equal to the file's."""
    return json.loads(json_text(obj))


def _seeds(seeds: Sequence[int]) -> Any:
    """A run of consecutive seeds as {first, count}; any other list as it is."""
    seeds = [int(s) for s in seeds]
    contiguous = bool(seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return {"first": seeds[0], "count": len(seeds)} if contiguous else seeds


def problem_key(family: TaskFamily, valid: TaskBatch) -> dict[str, Any]:
    """What identifies the tuning problem: the family, the validation tasks' seeds, their dtype and device, and
    the version of metatele that tunes (the baselines' numerics may change between versions)."""
    w = valid.init_weights()[0]
    return {"family": family.to_dict(), "validation_seeds": _seeds(valid.seeds), "dtype": str(w.dtype),
            "device": str(w.device), "metatele": __version__}


def _number(v: Any) -> bool:
    """A finite positive JSON number (not a boolean)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_entry(i: int, e: Any) -> dict[str, Any]:
    if not isinstance(e, dict) or set(e) != {*KEY_FIELDS, "lr"}:
        raise InvalidTunedLRs(f"entry {i} is not an object with the fields {', '.join(KEY_FIELDS)}, lr")
    if not isinstance(e["problem"], dict) or not isinstance(e["method"], dict) or \
            not isinstance(e["method"].get("name"), str):
        raise InvalidTunedLRs(f"entry {i}: problem and method must be objects, the method with a name")
    if not isinstance(e["steps"], int) or isinstance(e["steps"], bool) or e["steps"] <= 0:
        raise InvalidTunedLRs(f"entry {i}: steps must be a positive integer, got {e['steps']!r}")
    if not isinstance(e["grid"], list) or not e["grid"] or not all(_number(v) for v in e["grid"]):
        raise InvalidTunedLRs(f"entry {i}: the grid must be a non-empty list of finite positive numbers")
    if not _number(e["lr"]) or e["lr"] not in e["grid"]:
        raise InvalidTunedLRs(f"entry {i}: lr {e['lr']!r} is not a finite positive member of its grid")
    return e


def read(path: Path) -> list[dict[str, Any]]:
    """The validated entries of the file at `path` (which must exist); InvalidTunedLRs with the reason if it is
    not a regular file, too large, not UTF-8 JSON, or not of the expected form."""
    if regular_file(path, InvalidTunedLRs, "the file") > MAX_BYTES:
        raise InvalidTunedLRs(f"larger than {MAX_BYTES >> 20} MiB")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except OSError as e:
        raise InvalidTunedLRs(f"cannot read it: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidTunedLRs(f"not JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("entries"), list):
        raise InvalidTunedLRs(f"not an object with format {FORMAT!r} and a list of entries")
    if not _all_finite(obj):
        raise InvalidTunedLRs("it holds a number that is not finite")
    entries = [_check_entry(i, e) for i, e in enumerate(obj["entries"])]
    keys = [json.dumps([e[k] for k in KEY_FIELDS], sort_keys=True) for e in entries]
    if len(set(keys)) != len(keys):
        raise InvalidTunedLRs("two entries have the same key")
    return entries


def _python_warning(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class TunedLRs:
    """The tuned learning rates of one problem (`problem_key`), read from and written to `path`.

    `lr(method, grid, steps, tune)` gives the stored lr for that key, else calls `tune()` and stores its lr.
    `reused` names the methods whose lr came from the file. An invalid file is reported once through `warn` (one
    line) and rewritten at the first store.
    """

    def __init__(self, path: str | Path, problem: Mapping[str, Any],
                 warn: Callable[[str], None] = _python_warning) -> None:
        self.path, self.problem = Path(path), _json_plain(dict(problem))
        self.reused: list[str] = []
        self.entries: list[dict[str, Any]] = []
        if self.path.exists() or self.path.is_symlink():
            try:
                self.entries = read(self.path)
            except InvalidTunedLRs as e:
                warn(f"ignored the tuned learning rates in {self.path} ({e}); they are tuned again and the file "
                     "rewritten")

    def _key(self, method: Method, grid: Sequence[float], steps: int) -> dict[str, Any]:
        """The key of `method` (its name and hyper-parameters other than lr) on this problem."""
        hparams = {k: v for k, v in method.hparams.items() if k != "lr"}
        return _json_plain({"problem": self.problem, "method": {"name": method.name, **hparams},
                            "steps": int(steps), "grid": [float(v) for v in grid]})

    def lr(self, method: Method, grid: Sequence[float], steps: int, tune: Callable[[], float]) -> float:
        """The lr stored for (this problem, `method`, `grid`, `steps`), else `tune()`'s, stored and saved."""
        key = self._key(method, grid, steps)
        for e in self.entries:
            if all(e[k] == key[k] for k in KEY_FIELDS):
                self.reused.append(method.name)
                return float(e["lr"])
        lr = float(tune())
        self.entries.append({**key, "lr": lr})
        atomic_write_text(self.path, json_text({"format": FORMAT, "entries": self.entries}, indent=1) + "\n")
        return lr
