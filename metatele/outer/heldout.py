"""Held-out evaluation during meta-training: the current method on validation tasks (never trained on,
never the test seeds). `HeldOut` is the callback `metatele.train` wires into the trainer's loop."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metatele.evaluation.stats import summarize
from metatele.methods.base import Method
from metatele.step import rollout
from metatele.tasks.base import TaskFamily
from metatele.tasks.seeds import VALID_FIRST_SEED

__all__ = ["HeldOut"]


@dataclass
class HeldOut:
    """Run a method for `steps` steps on `n_tasks` validation tasks of `family`; report the mean log10 loss
    and the number of non-finite tasks at steps 20 and 100 (where ≤ steps) and at the last step."""

    family: TaskFamily
    n_tasks: int
    steps: int
    device: str | torch.device = "cpu"

    def __call__(self, method: Method) -> dict[str, float]:
        task = self.family.sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + self.n_tasks), device=self.device)
        traj = rollout(method, task, self.steps)
        out = {}
        for s in sorted({min(20, self.steps), min(100, self.steps), self.steps}):
            summ = summarize(traj.loss[s], intervals=False)
            out[f"log10_loss_mean_step{s}"] = summ["log10_loss_mean"]
            out[f"n_nonfinite_step{s}"] = summ["n_nonfinite"]
        return out
