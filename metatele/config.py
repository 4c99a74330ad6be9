"""Meta-training configuration: the flat keys of a TOML file and `key=value` overrides (`ConfigKeys`), and the
`TrainConfig` they build once: the task family, the learned method's spec and the trainer's settings.

The config sits above its parts: the family comes from `metatele.tasks.registry`, the spec from
`metatele.learned.LEARNED`, and `metatele.outer.TrainerSettings` holds the trainer's keys. Each part checks its own
values; the config adds only what involves two parts (a teleporting method needs tasks with the GL symmetry).
Errors are ConfigError naming the config keys (`ConfigError.params`); front ends translate them into options.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from metatele.errors import UNREGISTERED, ConfigError
from metatele.io import regular_file
from metatele.learned import LEARNED, LearnedSpec, MetaOptimizer
from metatele.outer.settings import TrainerSettings
from metatele.tasks import Symmetry, TaskFamily, family_from_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigKeys", "TrainConfig", "load", "to_dict"]

MAX_CONFIG_BYTES = 1 << 20
_T = TrainerSettings  # the trainer's defaults, in one place


@dataclass(frozen=True)
class ConfigKeys:
    """Every key of a meta-training config, with its default (the order is the stored order)."""

    method: str = "lstm-update-tele"  # a learned method registered in metatele.learned.LEARNED
    task: str = "regression"      # a task family registered in metatele.tasks.FAMILIES
    widths: list[int] = field(default_factory=lambda: [20, 20, 20])
    n: int = 20                   # regression: samples per task; mixture: the most samples per task
    law: str = "paper"            # regression: how tasks are drawn (metatele.tasks.LAWS)
    dataset: str = "mnist5k"      # classification: metatele.datasets name
    data_batch: int = 20          # classification: mini-batch size
    width_range: list[int] = field(default_factory=lambda: [8, 48])  # mixture: every width drawn in [low, high]
    depth_range: list[int] = field(default_factory=lambda: [1, 3])   # mixture: hidden layers in [low, high]
    laws: list[str] = field(default_factory=lambda: ["paper", "normal-init"])  # mixture: laws drawn from
    slope: float = 0.1            # LeakyReLU negative slope of the task networks
    trajectories: int = _T.trajectories
    steps: int = _T.steps
    min_steps: int = _T.min_steps
    unroll: int = _T.unroll
    batch: int = _T.batch
    meta_lr: float = _T.meta_lr
    meta_lr_final: float = _T.meta_lr_final
    hidden: int = 300             # LSTM size of the meta-optimizer's nets
    magnitude: float = 0.01       # teleport magnitude ‖T‖_F
    exact: bool = True            # exact group action; False: the paper's first-order variant
    gate: bool = False            # learned gate scaling the magnitude per step
    gate_bias: float = 2.0        # the gate starts at sigmoid(gate_bias): 2 → 0.88 (open), −2 → 0.12
    teleport_decay: float = 0.0   # > 0: teleport magnitude × exp(−t / teleport_decay) at inner step t
    progress: bool = False        # the LSTMs also read progress features of t/T (T: the run's length)
    preprocessing: str = "raw"    # measured better than "logsign" (experiments/README.md)
    out_scale: float = 0.1        # m1 update = out_scale · head(h) (update_form "direct")
    update_form: str = "direct"   # m1: "direct" (the paper), "residual" or "gain" (metatele.learned.nets.UpdateNet)
    meta_loss: str = _T.meta_loss
    loss_growth: float = _T.loss_growth
    clip: float = _T.clip
    loss_cap: float = _T.loss_cap
    second_order: bool = _T.second_order
    estimator: str = _T.estimator
    particles: int = _T.particles
    sigma: float = _T.sigma
    seed: int = _T.seed
    eval_every: int = _T.eval_every
    eval_tasks: int = _T.eval_tasks
    ckpt_every: int = _T.ckpt_every
    init: str = ""                # start from this checkpoint's meta-parameters (a shipped name or a path; "": fresh)


KEYS = tuple(f.name for f in fields(ConfigKeys))
TRAINER_KEYS = tuple(f.name for f in fields(TrainerSettings))


def _named(e: Exception) -> ConfigError:
    """A component's ValueError as a ConfigError whose `params` are the config keys its message names."""
    if isinstance(e, ConfigError) and e.params:
        return e
    text = str(e)
    return (type(e) if isinstance(e, ConfigError) else ConfigError)(text, params=tuple(k for k in KEYS if re.search(rf"(?<![\w-]){k}(?![\w-])", text)))


@dataclass(frozen=True)
class TrainConfig:
    """A meta-training run's parts, each built and validated once: the task `family`, the learned method's
    `spec` and the `trainer` settings; `keys` are the flat keys they were built from (stored in checkpoints)."""

    keys: ConfigKeys
    family: TaskFamily
    spec: LearnedSpec
    trainer: TrainerSettings

    @classmethod
    def from_keys(cls, keys: ConfigKeys) -> TrainConfig:
        """Build the parts from `keys` (types already checked); ConfigError naming the keys at fault."""
        values = dataclasses.asdict(keys)
        try:
            trainer = TrainerSettings(**{k: values[k] for k in TRAINER_KEYS})
            if keys.method not in LEARNED:
                raise ConfigError(f"unknown method {keys.method!r}; registered: {', '.join(LEARNED)} (if it is a "
                                  f"method of your own, it is {UNREGISTERED})", params=("method",))
            spec = LEARNED[keys.method].spec.from_config(keys.method, values)
            family = family_from_config(keys.task, values)
        except (ValueError, ConfigError) as e:
            raise _named(e) from None
        if _teleports(spec) and family.symmetry is not Symmetry.GL:
            raise ConfigError(
                f"{keys.method} teleports with the exact group action (GL), but the tasks of this {keys.task} family support only "
                f"the {family.symmetry.value} symmetry; train a method without teleport, or choose tasks that allow "
                f"it (regression: n={keys.n} samples must not exceed any width from the input to the last hidden "
                f"layer's input in widths={keys.widths})", params=("method", "n", "widths"))
        return cls(keys, family, spec, trainer)

    def to_dict(self) -> dict[str, Any]:
        """The flat keys (as stored in checkpoint metadata; `load(**d)` rebuilds the config)."""
        return dataclasses.asdict(self.keys)


def _teleports(spec: LearnedSpec) -> bool:
    """Whether the method teleports (asked of a model on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model: MetaOptimizer = LEARNED[spec.method].build(spec)
    return model.teleports


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
    types = {f.name: f.type for f in fields(ConfigKeys)}
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
    return TrainConfig.from_keys(ConfigKeys(**typed))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.to_dict()
