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

from metatele import checks
from metatele.datasets import DATASETS
from metatele.errors import ConfigError
from metatele.io import regular_file
from metatele.learned.meta_optimizer import MetaOptSpec
from metatele.methods.registry import LEARNED
from metatele.tasks import LAWS, ClassificationFamily, LeakyReLU, MixtureFamily, RegressionFamily, TaskFamily
from metatele.tasks.seeds import TRAIN_SEEDS, TRAIN_STRIDE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "load", "to_dict", "TASKS", "META_LOSSES"]

TASKS = ("regression", "classification", "mixture")
META_LOSSES = ("sum", "log")
MAX_CONFIG_BYTES = 1 << 20
MAX_META_LR = 10.0  # Adam's first steps move by ≈ 10·meta_lr: far above this, float32 overflows in the update
INT_RANGES = {  # allowed ranges of the integer keys: sane upper bounds, so that a typo cannot exhaust memory
    "trajectories": (1, TRAIN_STRIDE), "steps": (1, 10**7), "min_steps": (0, 10**7), "unroll": (1, 10**4),
    "batch": (1, 4096), "hidden": (1, checks.MAX_HIDDEN), "n": (1, checks.MAX_SAMPLES), "eval_tasks": (1, 4096),
    "data_batch": (1, checks.MAX_SAMPLES), "eval_every": (0, 10**9), "ckpt_every": (0, 10**9),
    "seed": (0, TRAIN_SEEDS.stop // TRAIN_STRIDE - 1),
}
RANGE_NOTES = {
    "trajectories": f" (each config seed owns {TRAIN_STRIDE} training task seeds)",
    "seed": f" (config seed s meta-trains on task seeds s·{TRAIN_STRIDE} … (s+1)·{TRAIN_STRIDE}−1)",
}


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
    meta_lr_final: float = 1.0    # < 1: the meta lr decays along a cosine to meta_lr × meta_lr_final by the last batch
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
        """Check every value once, types and ranges first (before anything is built); raise ConfigError naming
        the config key, and for a combination the `--set`/`--method` options that change it."""
        for name, (lo, hi) in INT_RANGES.items():
            try:
                checks.integer(name, getattr(self, name), lo, hi)
            except ValueError as e:
                raise ConfigError(f"{e}{RANGE_NOTES.get(name, '')}") from None
        try:
            for name in ("magnitude", "clip", "out_scale", "loss_growth", "slope"):
                checks.positive_float(name, getattr(self, name))
            checks.positive_float("meta_lr", self.meta_lr, MAX_META_LR)
            checks.positive_float("meta_lr_final", self.meta_lr_final)
            checks.nonneg_float("loss_cap", self.loss_cap)
            checks.nonneg_float("teleport_decay", self.teleport_decay)
            checks.finite_float("gate_bias", self.gate_bias)
            for name in ("exact", "gate", "second_order"):
                checks.boolean(name, getattr(self, name))
            for name, allowed in (("method", tuple(LEARNED)), ("task", TASKS), ("meta_loss", META_LOSSES),
                                  ("law", tuple(LAWS)), ("dataset", DATASETS)):
                checks.choice(name, getattr(self, name), allowed)
            checks.widths("widths", self.widths)
            checks.int_pair("width_range", self.width_range, 1, checks.MAX_WIDTH)
            checks.int_pair("depth_range", self.depth_range, 1, checks.MAX_LAYERS - 1)
            checks.choices("laws", self.laws, tuple(LAWS))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.steps % self.unroll:
            raise ConfigError(f"steps ({self.steps}) must be a multiple of unroll ({self.unroll}) "
                              "(--set steps=… or --set unroll=…)")
        if self.min_steps and not self.unroll <= self.min_steps <= self.steps:
            raise ConfigError(f"min_steps ({self.min_steps}) must be between unroll ({self.unroll}) and steps "
                              f"({self.steps}), or 0 for a fixed length")
        try:
            family = self.family()
            self.spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if LEARNED[self.method].teleport and self.task == "regression" and self.n > min(self.widths[:-2]):
            raise ConfigError(
                f"n={self.n} samples exceed a hidden-layer input width in {self.widths}: the exact group action "
                "needs n ≤ every width from the input to the last hidden layer's input (lower --set n=…, widen "
                "--set widths=…, or train a method without teleport, --method lstm-update)")
        if isinstance(family, ClassificationFamily):
            try:
                family.check_dataset()
            except ConfigError as e:
                raise ConfigError(f"{e} (--set widths=…)") from None
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


_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list[int]": "ints", "list[str]": "strs"}
_NAMES = {"ints": "a list of int", "strs": "a list of str"}


def _parse(name: str, typ: Any, text: str) -> Any:
    """A `--set KEY=VALUE` string as the key's type (int("20.7") and int("1e3") fail: no truncation)."""
    kind = _KINDS[typ]
    items = [v.strip() for v in text.strip("[]() ").split(",") if v.strip()]
    try:
        if kind == "bool":
            if text.lower() not in ("true", "1", "yes", "false", "0", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind == "ints":
            return [int(v) for v in items]
        if kind == "strs":
            return [v.strip("'\"") for v in items]
        return {"int": int, "float": float, "str": str}[kind](text)
    except ValueError:
        raise ConfigError(f"config key {name!r} expects {_NAMES.get(kind, kind)}, got {text!r}") from None


def _typed(name: str, typ: Any, value: Any) -> Any:
    """A TOML or keyword value, if it has the key's type. Strict: a float is not an int (20.7 and 20.0 are
    refused, not truncated), a bool is not a number, a string is not a number or a bool."""
    kind = _KINDS[typ]
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    seq = isinstance(value, (list, tuple))
    ok = {"bool": lambda: isinstance(value, bool), "int": lambda: integer(value), "str": lambda: isinstance(value, str),
          "float": lambda: integer(value) or isinstance(value, float),
          "ints": lambda: seq and all(integer(v) for v in value),
          "strs": lambda: seq and all(isinstance(v, str) for v in value)}[kind]()
    if not ok or (kind == "float" and integer(value) and abs(value) > 1e308):  # an int too large for a float
        raise ConfigError(f"config key {name!r} expects {_NAMES.get(kind, kind)}, got {value!r}")
    return float(value) if kind == "float" else list(value) if seq else value


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **kw: Any) -> TrainConfig:
    """Build a config: defaults ← TOML file ← keyword values ← `key=value` overrides; then validate."""
    values: dict[str, Any] = {}
    if path is not None:
        if regular_file(Path(path), ConfigError, "config file") > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; not a config")
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
    values.update(kw)
    types = {f.name: f.type for f in fields(TrainConfig)}
    texts: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        texts[k.strip()] = v.strip()
    unknown = sorted((set(values) | set(texts)) - set(types))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(types)}")
    typed = {k: _typed(k, types[k], v) for k, v in values.items()}  # an overridden value must still be valid
    typed.update({k: _parse(k, types[k], v) for k, v in texts.items()})
    return TrainConfig(**typed).validate()


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
