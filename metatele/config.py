"""Meta-training configuration: a typed dataclass, read from TOML and overridden by `--set key=value`."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metatele.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    method: str = "lstm-update-tele"
    widths: list[int] = field(default_factory=lambda: [20, 20, 20])
    n: int = 20
    trajectories: int = 700       # tasks meta-trained on, in batches of `batch` (the last may be smaller)
    steps: int = 100              # inner steps per trajectory
    unroll: int = 10              # truncated-BPTT window
    batch: int = 16               # trajectories run in parallel
    meta_lr: float = 1e-3
    hidden: int = 300
    eps: float = 0.01             # teleport magnitude ‖T‖_F
    exact: bool = True            # exact group action; False: the paper's first-order variant
    gate: bool = False            # learned gate scaling eps per step
    preprocessing: str = "raw"       # measured better than "logsign" (experiments/README.md)
    out_scale: float = 0.1        # m1 update = out_scale · head(h)
    meta_loss: str = "log"        # "sum" (paper: Σ inner losses) or "log" (Σ log inner losses)
    loss_growth: float = 1.0      # step weights w_t ∝ loss_growth^t within a window (1: plain sum)
    clip: float = 1.0             # meta-gradient norm clipping
    second_order: bool = True     # differentiate through the inner gradients (exact meta-gradient)
    seed: int = 0
    eval_every: int = 20          # held-out evaluation every N batches (0: never)
    eval_tasks: int = 16
    ckpt_every: int = 20          # checkpoint every N batches (and at the end / on SIGINT)

    def validate(self) -> TrainConfig:
        from metatele.meta_optimizers import METHODS, PREPROCESS

        for name in ("trajectories", "steps", "unroll", "batch", "hidden", "n", "eval_tasks"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.preprocessing not in PREPROCESS:
            raise ConfigError(f"unknown preprocessing {self.preprocessing!r}; choose one of: {', '.join(PREPROCESS)}")
        if self.meta_loss not in ("sum", "log"):
            raise ConfigError(f"meta_loss must be 'sum' or 'log', got {self.meta_loss!r}")
        if self.steps % self.unroll:
            raise ConfigError(f"steps ({self.steps}) must be a multiple of unroll ({self.unroll})")
        if not (self.meta_lr > 0 and self.eps > 0 and self.clip > 0 and self.out_scale > 0 and self.loss_growth > 0):
            raise ConfigError("meta_lr, eps, clip, out_scale and loss_growth must be positive")
        check_widths(self.widths, self.n, needs_exact=self.method != "lstm-update")
        return self


def check_widths(widths: list[int], n: int, needs_exact: bool) -> None:
    """Refuse shapes the task family or the exact group action cannot handle."""
    if len(widths) < 3 or min(widths) < 1:
        raise ConfigError(f"widths need ≥ 3 positive entries (input, hidden..., output), got {widths}")
    if needs_exact and n > min(widths[:-2]):
        raise ConfigError(
            f"n={n} samples exceed a hidden-layer input width in {widths}: the exact group action needs "
            "n ≤ every width from the input to the last hidden layer's input"
        )


def _coerce(name: str, typ: Any, value: Any) -> Any:
    typ = {"int": int, "float": float, "bool": bool, "str": str, "list[int]": list}.get(typ, typ)
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
            return [int(v) for v in value]
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
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        values[k.strip()] = v.strip()
    types = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(types)}")
    return TrainConfig(**{k: _coerce(k, types[k], v) for k, v in values.items()}).validate()


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
