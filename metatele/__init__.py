"""metatele: learning to optimize with parameter-space symmetry.

The public face, imported lazily (PEP 562): `import metatele` stays light (torch is not imported until a name
below is first used), so that the `metatele` program can install its Ctrl-C handler before the heavy imports
(`metatele.entry`).

- tasks: `TaskFamily` and `TaskBatch` (the protocol), `RegressionFamily`, `ClassificationFamily`, `MixtureFamily`;
- methods as composable transforms: `chain`, `sgd`, `adam`; running one on tasks: `rollout`;
- your own network: `Teleporter` (teleportation inside a torch training loop);
- learned optimizers: `load_pretrained(name)` (the shipped ones) and `load_model(path)` (any checkpoint);
- `optim`: learned optimizers as torch optimizers (where installed).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from metatele._version import __version__

_NAMES = {
    "metatele.tasks": ("TaskFamily", "TaskBatch", "RegressionFamily", "ClassificationFamily", "MixtureFamily"),
    "metatele.methods": ("chain", "sgd", "adam"),
    "metatele.step": ("rollout",),
    "metatele.teleport": ("Teleporter",),
    "metatele.checkpoints": ("load_pretrained", "load_model"),
}
_SUBMODULES = tuple(m for m in ("optim",) if (Path(__file__).parent / m / "__init__.py").is_file())
if "optim" in _SUBMODULES:
    _NAMES["metatele.optim"] = ("LearnedOptimizer",)
_WHERE = {name: module for module, names in _NAMES.items() for name in names}

__all__ = ["__version__", *_WHERE, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    """The public names and submodules, imported on first use (PEP 562)."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"metatele.{name}")
    else:
        raise AttributeError(f"module 'metatele' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
