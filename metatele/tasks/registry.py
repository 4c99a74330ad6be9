"""Task families by name. The config (`task = …`), the CLI and checkpoints (the stored family's "name") look
families up here, so a family from your own module trains and evaluates like the built-in ones.

A family is registered as a class (or any object) with two constructors:
- `from_dict(d)`: the family that `to_dict()` described (d without "name"). d comes from untrusted checkpoint
  metadata: check every type and range (see `metatele.checks`) and raise ValueError, TypeError or KeyError;
- `from_config(keys)`: the family from the meta-training config's keys (a mapping with widths, n, law, dataset,
  data_batch, width_range, depth_range, laws, slope, …; read those you need).

Its instances follow `metatele.tasks.base.TaskFamily`; check a new one with `metatele.testing.check_family`.
Register it, for example in `my_module.py`, with `register_family("toy", ToyFamily)`; then
`metatele train --plugin my_module --set task=toy` trains on it and `metatele eval --plugin my_module` evaluates
its checkpoints. Checkpoint metadata never imports a module: a family of a plugin needs `--plugin`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from metatele.errors import UNREGISTERED
from metatele.tasks.base import TaskFamily
from metatele.tasks.classification import ClassificationFamily
from metatele.tasks.mixture import MixtureFamily
from metatele.tasks.regression import RegressionFamily

__all__ = ["FamilyFactory", "FAMILIES", "register_family", "family_from_dict", "family_from_config"]


class FamilyFactory(Protocol):
    def from_dict(self, d: Mapping[str, Any]) -> TaskFamily: ...

    def from_config(self, keys: Mapping[str, Any]) -> TaskFamily: ...


FAMILIES: dict[str, FamilyFactory] = {}


def register_family(name: str, factory: FamilyFactory) -> None:
    """Register task family `name` (its instances' `name` and the "name" in their `to_dict()`). Once per name."""
    if name in FAMILIES:
        raise ValueError(f"task family {name!r} is already registered")
    FAMILIES[name] = factory


def _factory(name: Any) -> FamilyFactory:
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; registered: {', '.join(FAMILIES)} (if it is a family of "
                         f"your own, it is {UNREGISTERED})")
    return FAMILIES[name]


def family_from_dict(d: Mapping[str, Any]) -> TaskFamily:
    """Rebuild a family from `to_dict()` output (untrusted checkpoint metadata: types and ranges are checked);
    raises ValueError/TypeError/KeyError on a bad description."""
    d = dict(d)
    return _factory(d.pop("name")).from_dict(d)


def family_from_config(name: str, keys: Mapping[str, Any]) -> TaskFamily:
    """Family `name` built from the meta-training config's keys; ValueError naming a key on a bad value."""
    return _factory(name).from_config(keys)


register_family("regression", RegressionFamily)
register_family("classification", ClassificationFamily)
register_family("mixture", MixtureFamily)
