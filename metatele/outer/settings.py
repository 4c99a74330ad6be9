"""The meta-trainer's own settings: how many trajectories, how long, the truncated-BPTT window, the meta-loss,
the outer optimizer, when to evaluate and save. Nothing about the task family or the learned method."""
from __future__ import annotations

from dataclasses import dataclass

from metatele import checks
from metatele.errors import ConfigError
from metatele.tasks.seeds import TRAIN_SEEDS, TRAIN_STRIDE

__all__ = ["TrainerSettings", "META_LOSSES", "ESTIMATORS", "MAX_META_LR"]

META_LOSSES = ("sum", "log")
ESTIMATORS = ("tbptt", "pes")
MAX_META_LR = 10.0  # Adam's first steps move by ≈ 10·meta_lr: far above this, float32 overflows in the update
INT_RANGES = {  # sane upper bounds, so that a typo cannot exhaust memory
    "trajectories": (1, TRAIN_STRIDE), "steps": (1, 10**7), "min_steps": (0, 10**7), "unroll": (1, 10**4),
    "batch": (1, 4096), "particles": (2, 1024), "eval_tasks": (1, 4096), "eval_every": (0, 10**9), "ckpt_every": (0, 10**9),
    "seed": (0, TRAIN_SEEDS.stop // TRAIN_STRIDE - 1),
}
RANGE_NOTES = {
    "trajectories": f" (each seed owns {TRAIN_STRIDE} training task seeds)",
    "seed": f" (seed s meta-trains on task seeds s·{TRAIN_STRIDE} … (s+1)·{TRAIN_STRIDE}−1)",
}


@dataclass(frozen=True)
class TrainerSettings:
    """Meta-training by truncated BPTT or PES (`metatele.outer.trainer`, `metatele.outer.pes`), validated on construction: ConfigError names the
    parameter (and `params` lists the parameters involved)."""

    trajectories: int = 700       # tasks meta-trained on, in batches of `batch` (the last may be smaller)
    steps: int = 100              # inner steps per trajectory (the longest, if min_steps < steps)
    min_steps: int = 0            # > 0: each batch's trajectory length is log-uniform in [min_steps, steps]
    unroll: int = 10              # truncated-BPTT window
    batch: int = 16               # trajectories run in parallel
    meta_lr: float = 1e-3
    meta_lr_final: float = 1.0    # < 1: the meta lr decays along a cosine to meta_lr × meta_lr_final by the last batch
    meta_loss: str = "log"        # "sum" (paper: Σ inner losses) or "log" (Σ log inner losses)
    loss_growth: float = 1.0      # step weights w_t ∝ loss_growth^t within a window (1: plain sum)
    clip: float = 1.0             # meta-gradient norm clipping
    loss_cap: float = 0.0         # > 0: freeze a training task once its loss exceeds loss_cap × its initial loss
    second_order: bool = True     # differentiate through the inner gradients (exact meta-gradient)
    estimator: str = "tbptt"      # "tbptt": back-propagate each window; "pes": persistent ES (metatele.outer.pes)
    particles: int = 8            # pes: perturbed copies of the batch, in antithetic pairs (even)
    sigma: float = 0.01           # pes: standard deviation of the perturbations of the meta-parameters
    seed: int = 0                 # meta-parameter initialization and training task seeds
    eval_every: int = 20          # held-out evaluation every N batches (0: never)
    eval_tasks: int = 16
    ckpt_every: int = 20          # checkpoint every N batches (and at the end / on interrupt)

    def __post_init__(self) -> None:
        for name, (lo, hi) in INT_RANGES.items():
            try:
                checks.integer(name, getattr(self, name), lo, hi)
            except ValueError as e:
                raise ConfigError(f"{e}{RANGE_NOTES.get(name, '')}", params=(name,)) from None
        for name, check in (("clip", checks.positive_float), ("loss_growth", checks.positive_float),
                            ("meta_lr", lambda k, v: checks.positive_float(k, v, MAX_META_LR)),
                            ("meta_lr_final", checks.positive_float), ("loss_cap", checks.nonneg_float),
                            ("second_order", checks.boolean), ("sigma", checks.positive_float),
                            ("estimator", lambda k, v: checks.choice(k, v, ESTIMATORS)),
                            ("meta_loss", lambda k, v: checks.choice(k, v, META_LOSSES))):
            try:
                check(name, getattr(self, name))
            except ValueError as e:
                raise ConfigError(str(e), params=(name,)) from None
        if self.particles % 2:
            raise ConfigError(f"particles ({self.particles}) must be even (antithetic pairs)", params=("particles",))
        if self.steps % self.unroll:
            raise ConfigError(f"steps ({self.steps}) must be a multiple of unroll ({self.unroll})",
                              params=("steps", "unroll"))
        if self.min_steps and not self.unroll <= self.min_steps <= self.steps:
            raise ConfigError(f"min_steps ({self.min_steps}) must be between unroll ({self.unroll}) and steps "
                              f"({self.steps}), or 0 for a fixed length", params=("min_steps",))

    @property
    def n_batches(self) -> int:
        """Batches of trajectories in the run (the last may be smaller)."""
        return -(-self.trajectories // self.batch)
