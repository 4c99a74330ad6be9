"""The optimizers study's plan: the optimizers (each with the paper's lr and teleport epoch), the arms (ways to
train: no teleport, or `Teleporter` settings), and the sizes (`StudyConfig`, `QUICK`)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from metatele.errors import ConfigError

__all__ = ["OptimizerSpec", "OPTIMIZERS", "Arm", "ARMS", "StudyConfig", "QUICK", "PAPER_TELEPORT_BATCH"]

PAPER_TELEPORT_BATCH = 200


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer at a given lr, the paper's lr for it and its teleport epoch."""

    name: str
    make: Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
    paper_lr: float
    teleport_epoch: int


OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in (
    OptimizerSpec("sgd", lambda p, lr: torch.optim.SGD(p, lr=lr), 1e-2, 2),
    OptimizerSpec("momentum", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), 1e-3, 0),
    OptimizerSpec("adagrad", lambda p, lr: torch.optim.Adagrad(p, lr=lr), 1e-2, 2),
    OptimizerSpec("rmsprop", lambda p, lr: torch.optim.RMSprop(p, lr=lr), 1e-4, 0),
    OptimizerSpec("adam", lambda p, lr: torch.optim.Adam(p, lr=lr), 1e-4, 0),
)}


@dataclass(frozen=True)
class Arm:
    """One way to train: no teleport (method None), or `Teleporter` settings. paper_batch: teleport on
    the paper's 200 samples, or half the exact limit if that is smaller (images rarely span every input
    dimension: digits' 8×8 images have 3 always-blank pixels and rank 61), instead of the exact limit."""

    name: str
    method: str | None = None
    state: str = "keep"
    layers: int | None = None
    paper_batch: bool = False


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("none"),
    Arm("teleport", "ascent"),
    Arm("teleport-reset", "ascent", state="reset"),
    Arm("random", "random"),
    Arm("teleport-layer1", "ascent", layers=1, paper_batch=True),
    Arm("teleport-layer1-reset", "ascent", state="reset", layers=1, paper_batch=True),
)}


@dataclass(frozen=True)
class StudyConfig:
    """What `run_study` runs. lr_grid: multiples of each optimizer's paper lr."""

    dataset: str = "mnist5k"
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    arms: tuple[str, ...] = tuple(ARMS)
    epochs: int = 40
    seeds: int = 5
    batch_size: int = 20
    hidden: tuple[int, ...] = (16, 10)
    teleports: int = 8
    ascent_steps: int = 10
    lr_grid: tuple[float, ...] = (0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0)
    tune_seeds: int = 1
    tune_epochs: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.optimizers:
            raise ConfigError(f"no optimizer given; choose from: {', '.join(OPTIMIZERS)}")
        bad = [o for o in self.optimizers if o not in OPTIMIZERS] + [a for a in self.arms if a not in ARMS]
        if bad:
            raise ConfigError(f"unknown optimizer or arm {bad}; optimizers: {', '.join(OPTIMIZERS)}; "
                              f"arms: {', '.join(ARMS)}")
        if "none" not in self.arms:
            raise ConfigError("the arms must include 'none' (the baseline every difference is taken against)")
        if "random" in self.arms and "teleport" not in self.arms:
            raise ConfigError("the 'random' arm takes its magnitude from the 'teleport' arm; include both")


QUICK = {"epochs": 3, "seeds": 2, "teleports": 2, "lr_grid": (1.0, 10 ** 0.5), "tune_epochs": 1,
         "arms": ("none", "teleport", "teleport-layer1")}
