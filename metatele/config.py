"""Meta-training configuration: one typed dataclass, read from TOML and overridden by `key=value` strings.

`TrainConfig` is the single source of truth: it is validated once (`validate`), and it derives the task
family (`family()`) and the meta-optimizer spec (`spec()`) that training builds.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metatele.errors import ConfigError
from metatele.learned.meta_optimizer import MetaOptSpec
from metatele.methods.registry import LEARNED
from metatele.tasks import LAWS, ClassificationFamily, LeakyReLU, MixtureFamily, RegressionFamily, TaskFamily

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "load", "to_dict", "TASKS", "META_LOSSES"]

TASKS = ("regression", "classification", "mixture")
META_LOSSES = ("sum", "log")


@dataclass
class TrainConfig:
    method: str = "lstm-update-tele"
    task: str = "regression"      # task family: "regression" (the paper's), "classification" or "mixture"
    widths: list[int] = field(default_factory=lambda: [20, 20, 20])
    n: int = 20                   # regression: samples per task
    law: str = "paper"            # regression: how tasks are drawn (metatele.tasks.LAWS)
    dataset: str = "mnist5k"      # classification: metatele.datasets name
    data_batch: int = 20          # classification: mini-batch size
    width_range: list[int] = field(default_factory=lambda: [8, 48])  # mixture: every width drawn in [low, high]
    depth_range: list[int] = field(default_factory=lambda: [1, 3])   # mixture: hidden layers in [low, high]
    laws: list[str] = field(default_factory=lambda: ["paper", "normal-init"])  # mixture: laws drawn from
    slope: float = 0.1            # LeakyReLU negative slope of the task networks
    trajectories: int = 700       # tasks meta-trained on, in batches of `batch` (the last may be smaller)
    steps: int = 100              # inner steps per trajectory (the longest, if min_steps < steps)
    min_steps: int = 0            # > 0: each batch's trajectory length is log-uniform in [min_steps, steps]
    unroll: int = 10              # truncated-BPTT window
    batch: int = 16               # trajectories run in parallel
    meta_lr: float = 1e-3
    hidden: int = 300             # LSTM size of the meta-optimizer's nets
    magnitude: float = 0.01       # teleport magnitude ‖T‖_F
    exact: bool = True            # exact group action; False: the paper's first-order variant
    gate: bool = False            # learned gate scaling the magnitude per step
    gate_bias: float = 2.0        # the gate starts at sigmoid(gate_bias): 2 → 0.88 (open), −2 → 0.12
    teleport_decay: float = 0.0   # > 0: teleport magnitude × exp(−t / teleport_decay) at inner step t
    preprocessing: str = "raw"    # measured better than "logsign" (experiments/README.md)
    out_scale: float = 0.1        # m1 update = out_scale · head(h) (update_form "direct")
    update_form: str = "direct"   # m1: "direct" (the paper) or "residual" (learned GD step + learned part)
    meta_loss: str = "log"        # "sum" (paper: Σ inner losses) or "log" (Σ log inner losses)
    loss_growth: float = 1.0      # step weights w_t ∝ loss_growth^t within a window (1: plain sum)
    clip: float = 1.0             # meta-gradient norm clipping
    loss_cap: float = 0.0         # > 0: freeze a training task once its loss exceeds loss_cap × its initial loss
    second_order: bool = True     # differentiate through the inner gradients (exact meta-gradient)
    seed: int = 0
    eval_every: int = 20          # held-out evaluation every N batches (0: never)
    eval_tasks: int = 16
    ckpt_every: int = 20          # checkpoint every N batches (and at the end / on interrupt)

    def validate(self) -> TrainConfig:
        """Check every value once; raise ConfigError naming the config key."""
        for name in ("trajectories", "steps", "unroll", "batch", "hidden", "n", "eval_tasks", "data_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "seed", "min_steps", "loss_cap", "teleport_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name, value, allowed in (("method", self.method, tuple(LEARNED)), ("task", self.task, TASKS),
                                     ("meta_loss", self.meta_loss, META_LOSSES), ("law", self.law, tuple(LAWS))):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
        if self.steps % self.unroll:
            raise ConfigError(f"steps ({self.steps}) must be a multiple of unroll ({self.unroll})")
        if self.min_steps and not self.unroll <= self.min_steps <= self.steps:
            raise ConfigError(f"min_steps ({self.min_steps}) must be between unroll ({self.unroll}) and steps "
                              f"({self.steps}), or 0 for a fixed length")
        if not (self.meta_lr > 0 and self.magnitude > 0 and self.clip > 0 and self.out_scale > 0
                and self.loss_growth > 0):
            raise ConfigError("meta_lr, magnitude, clip, out_scale and loss_growth must be positive")
        try:
            self.family()
            self.spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if LEARNED[self.method].teleport and self.task == "regression" and self.n > min(self.widths[:-2]):
            raise ConfigError(
                f"n={self.n} samples exceed a hidden-layer input width in {self.widths}: the exact group action "
                "needs n ≤ every width from the input to the last hidden layer's input")
        return self

    def family(self) -> TaskFamily:
        """The task family meta-training samples from."""
        act = LeakyReLU(self.slope)
        if self.task == "classification":
            return ClassificationFamily(self.dataset, tuple(self.widths), self.data_batch, activation=act)
        if self.task == "mixture":
            if len(self.width_range) != 2 or len(self.depth_range) != 2:
                raise ValueError("width_range and depth_range need two entries: [low, high]")
            return MixtureFamily(tuple(self.width_range), tuple(self.depth_range), tuple(self.laws), self.n, act)
        return RegressionFamily(tuple(self.widths), self.n, LAWS[self.law], act)

    def spec(self) -> MetaOptSpec:
        """The meta-optimizer these settings build."""
        widths = () if LEARNED[self.method].size_agnostic else tuple(self.widths)
        return MetaOptSpec(method=self.method, widths=widths, hidden=self.hidden,
                           preprocessing=self.preprocessing, magnitude=self.magnitude, exact=self.exact,
                           gate=self.gate, out_scale=self.out_scale, update_form=self.update_form,
                           gate_bias=self.gate_bias, teleport_decay=self.teleport_decay)


def _coerce(name: str, typ: Any, value: Any) -> Any:
    typ = {"int": int, "float": float, "bool": bool, "str": str, "list[int]": list, "list[str]": "strs"}.get(typ, typ)
    if typ == "strs":
        items = value.strip("[]() ").split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"config key {name!r} expects a list of strings, got {value!r}")
        return [v.strip().strip("'\"") for v in items if v.strip()]
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if typ is list:
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            return [_coerce(name, int, v) for v in value]
        if typ is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise ValueError
        if typ is float and isinstance(value, bool):
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r} expects {typ.__name__}, got {value!r}") from None


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **kw: Any) -> TrainConfig:
    """Build a config: defaults ← TOML file ← keyword values ← `key=value` overrides; then validate."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    values.update(kw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        values[k.strip()] = v.strip()
    types = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(types)}")
    return TrainConfig(**{k: _coerce(k, types[k], v) for k, v in values.items()}).validate()


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
