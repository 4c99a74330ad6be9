"""Learned methods: the base of every learned family, and the registry of learned methods by name.

A learned family is a `MetaOptimizer` subclass (an `nn.Module` holding the meta-parameters) with its own frozen
spec, a `LearnedSpec` subclass that holds everything needed to rebuild it and is stored in checkpoint metadata.
Each registered name is one variant of a family. The CLI (`--method`), the config (`method = …`) and checkpoints
(`spec.method`) look names up in `LEARNED`. A `MetaOptimizer` is a `Composed` method: its transforms are chained
by `metatele.methods.base.chain`, so a learned method runs wherever a baseline runs.

Registering a new learned family takes a few lines (for example in your own module `my_module.py`):

    @dataclass(frozen=True)
    class MySpec(LearnedSpec):
        hidden: int = 16

        def check(self) -> None:  # ranges of (possibly untrusted) values: raise ValueError naming the field
            checks.integer("hidden", self.hidden, 1, checks.MAX_HIDDEN)

    class MyOptimizer(MetaOptimizer):
        def __init__(self, spec: MySpec) -> None:
            super().__init__(spec)
            self.net = MyNet(spec.hidden)                # the meta-parameters
            self.compose(update=MyRule(self.net))        # a Transform; teleport=… for a teleport policy

    register_learned("my-method", MyOptimizer, MySpec)

Then `metatele train --plugin my_module --method my-method` meta-trains it (the config fills every spec field
that has the name of a config key; the others keep their defaults), `load_model` rebuilds it from a
checkpoint, and `metatele eval --plugin my_module --checkpoint …` evaluates it. Keyword arguments of
`register_learned` beyond the spec type are passed to the family's constructor (one family, several
registered variants, as for the paper's three LSTM methods).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from metatele import checks
from metatele.errors import UNREGISTERED
from metatele.methods.base import Composed, Horizon, Proposal, Transform, chain, checked_horizon

__all__ = ["LearnedSpec", "MetaOptimizer", "LearnedEntry", "LEARNED", "register_learned", "spec_from_dict",
           "build", "parameter_count", "FORMAT1_NEUTRAL"]

# Checkpoint format 1 stored one spec layout for every method. A family without one of these fields writes the
# neutral value in its place (so that files stay readable by metatele 0.2), and reading checks and drops it.
FORMAT1_ORDER = ("method", "widths", "hidden", "preprocessing", "magnitude", "exact", "gate", "out_scale",
                 "update_form", "gate_bias", "teleport_decay")
FORMAT1_NEUTRAL: dict[str, Any] = {"widths": [], "preprocessing": "raw", "gate": False, "out_scale": 0.1,
                                   "update_form": "direct"}
_FORMAT1_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "widths": lambda k, v: v if v == [] else checks.widths(k, v),
    "preprocessing": lambda k, v: checks.choice(k, v, ("logsign", "raw", "rms")),
    "gate": checks.boolean,
    "out_scale": checks.positive_float,
    "update_form": lambda k, v: checks.choice(k, v, ("direct", "residual", "gain")),
}


def _json(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclass(frozen=True)
class LearnedSpec:
    """Base of every learned family's spec: `method` is the registered name. Subclasses add their fields (with
    defaults) and override `check`; the spec is validated on construction, before anything is allocated, and
    a meta-optimizer above checks.MAX_META_PARAMETERS parameters is refused."""

    method: str
    added_fields: ClassVar[tuple[str, ...]] = ()  # fields a family gained after its checkpoints were first written

    def __post_init__(self) -> None:
        entry = LEARNED.get(self.method) if isinstance(self.method, str) else None
        if entry is None:
            raise ValueError(f"unknown learned method {self.method!r}; registered: {', '.join(LEARNED)}")
        if type(self) is not entry.spec:
            raise ValueError(f"learned method {self.method!r} takes a {entry.spec.__name__}, not a {type(self).__name__}")
        self.check()
        n = parameter_count(self)
        if n > checks.MAX_META_PARAMETERS:
            raise ValueError(f"a meta-optimizer {self.method} with {self.to_dict()} would have {n:.3g} parameters, "
                             f"above the limit of {checks.MAX_META_PARAMETERS:.0e}")

    def check(self) -> None:
        """Raise ValueError naming the first field out of its range (types included)."""

    @property
    def fixed_widths(self) -> tuple[int, ...]:
        """The network widths the method is built for; () if it runs on any shape."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """JSON description (checkpoint metadata); `spec_from_dict` rebuilds the spec. A field of `added_fields`
        is left out while it holds its default, so that a spec without the newer feature is stored as before."""
        own = {f.name: _json(getattr(self, f.name)) for f in fields(self)
               if f.name not in self.added_fields or getattr(self, f.name) != f.default}
        if set(own) <= set(FORMAT1_ORDER):  # the format-1 layout (see FORMAT1_NEUTRAL)
            return {k: own.get(k, FORMAT1_NEUTRAL.get(k)) for k in FORMAT1_ORDER if k in own or k in FORMAT1_NEUTRAL}
        return own

    @classmethod
    def from_config(cls, method: str, keys: Mapping[str, Any]) -> LearnedSpec:
        """The spec of `method` whose fields take the values of the config keys of the same name."""
        return cls(method=method, **{f.name: keys[f.name] for f in fields(cls) if f.name != "method" and f.name in keys})


class MetaOptimizer(nn.Module):
    """Base of every learned family: meta-parameters (`nn.Module`) and the `Composed` method made of the
    transforms that use them (the `Method` protocol). Subclasses build their nets, then call `compose`.
    `clock` holds T, the length of the coming run, for transforms with progress features (give them this
    object); `metatele.methods.set_horizon` and the `horizon` property set it."""

    def __init__(self, spec: LearnedSpec) -> None:
        super().__init__()
        self.spec = spec
        self.clock = Horizon()
        self.metadata: dict[str, Any] = {}  # a loaded checkpoint's metadata (metatele.checkpoints)
        self.composed: Composed | None = None
        self.update_rule: Transform | None = None
        self.teleports = False

    def compose(self, update: Transform | None = None, teleport: Transform | None = None) -> None:
        """Make the method chain(update, teleport): an update rule and a teleport policy, either optional."""
        self.update_rule, self.teleports = update, teleport is not None
        self.composed = Composed(self.spec.method, chain(*[t for t in (update, teleport) if t is not None]),
                                 clock=self.clock)

    @property
    def name(self) -> str:
        return self.spec.method

    @property
    def horizon(self) -> float:
        """T of the progress features for the next runs (`metatele.methods.DEFAULT_HORIZON` unless set)."""
        return self.clock.steps

    @horizon.setter
    def horizon(self, value: float) -> None:
        self.clock.steps = checked_horizon(value)

    def init_state(self, weights: Sequence[torch.Tensor]) -> Any:
        return self.composed.init_state(weights)

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any
                ) -> tuple[Proposal, Any]:
        return self.composed.propose(weights, grads, state)

    def without_teleport(self) -> Composed:
        """The same learned update with the teleport switched off (an ablation; shares the nets)."""
        if self.update_rule is None:
            raise ValueError(f"{self.name} has no learned update to keep")
        return Composed(f"{self.name} (teleport off)", self.update_rule, clock=self.clock)


@dataclass(frozen=True)
class LearnedEntry:
    """A registered learned method: its family, the family's spec type and the variant's constructor keywords."""

    name: str
    family: type[MetaOptimizer]
    spec: type[LearnedSpec]
    variant: Mapping[str, Any]

    def build(self, spec: LearnedSpec) -> MetaOptimizer:
        return self.family(spec, **self.variant)


LEARNED: dict[str, LearnedEntry] = {}  # in registration (report) order


def register_learned(name: str, family: type[MetaOptimizer], spec: type[LearnedSpec], **variant: Any) -> None:
    """Register learned method `name`: `family(spec_instance, **variant)` builds it. A name is registered once."""
    if name in LEARNED:
        raise ValueError(f"learned method {name!r} is already registered")
    LEARNED[name] = LearnedEntry(name, family, spec, dict(variant))


def build(spec: LearnedSpec) -> MetaOptimizer:
    """The meta-optimizer `spec` describes (initialized from the global RNG)."""
    return LEARNED[spec.method].build(spec)


def parameter_count(spec: LearnedSpec) -> int:
    """The number of meta-parameters `spec` builds, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build(spec).parameters())


def spec_from_dict(d: Mapping[str, Any]) -> LearnedSpec:
    """Rebuild a spec from `to_dict()` output (untrusted checkpoint metadata): the method must be registered,
    every key a field of its spec (format-1 keys the family lacks must hold a valid value and are dropped), and
    every value in range. Raises ValueError, TypeError or KeyError."""
    method = d["method"]
    if not isinstance(method, str) or method not in LEARNED:
        raise ValueError(f"unknown learned method {method!r}; registered: {', '.join(LEARNED)} (if it is a "
                         f"method of your own, it is {UNREGISTERED})")
    cls = LEARNED[method].spec
    names = {f.name for f in fields(cls)}
    kept = {}
    for k, v in d.items():
        if k in names:
            kept[k] = tuple(v) if isinstance(v, list) else v
        elif k in _FORMAT1_CHECKS:
            _FORMAT1_CHECKS[k](k, v)
        else:
            raise ValueError(f"unknown field {k!r} in the spec of {method}")
    return cls(**kept)
