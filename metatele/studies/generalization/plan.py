"""The generalization study's plan: the paper's network and SGD settings, the measures, teleport variants and
groups, and the sizes of a run (`Plan`, `FULL`, `QUICK`)."""
from __future__ import annotations

from dataclasses import dataclass

from metatele import datasets
from metatele.teleport.targets import OBJECTIVES

__all__ = ["PAPER_LR", "PAPER_BATCH", "HIDDEN", "MEASURE_BATCH", "VARIANTS", "GROUPS", "MEASURES", "PAPER_SIGN",
           "TARGETS", "Plan", "FULL", "QUICK", "default_datasets"]

PAPER_LR = 1e-2
PAPER_BATCH = 20
HIDDEN = (16, 10)
MEASURE_BATCH = 200
VARIANTS = ("none", "random", *OBJECTIVES)
GROUPS = ("gl", "diag")
MEASURES = {"phi": "φ sharpness", "phi_paper": "φ paper's statistic", "psi": "ψ curvature (200, lsq)",
            "psi_exact": "ψ curvature (exact batch)"}
PAPER_SIGN = {"phi": "+", "phi_paper": "+", "psi": "−", "psi_exact": "−"}
TARGETS = {"val_loss": "validation loss", "gap": "generalization gap"}


@dataclass(frozen=True)
class Plan:
    """Sizes of one study (`FULL` or `QUICK`); see the module docstring."""

    epochs: int = 40
    runs: int = 50
    seed_sets: int = 2
    measure_batches: int = 10
    sharp_dirs: int = 4
    paper_dirs: int = 2
    curv_dirs: int = 16
    exact_batch: int = 8
    teleport_seeds: int = 10
    teleport_epoch: int = 20
    teleport_steps: int = 10
    step_gl: float = 0.003
    step_diag: float = 0.1
    teleport_dirs: int = 16
    n_boot: int = 10000

    def step(self, group: str) -> float:
        return self.step_gl if group == "gl" else self.step_diag


FULL = Plan()
QUICK = Plan(epochs=2, runs=5, measure_batches=1, sharp_dirs=2, paper_dirs=1, curv_dirs=4, teleport_seeds=2,
             teleport_epoch=1, teleport_steps=2, teleport_dirs=2, n_boot=500)


def default_datasets() -> list[str]:
    """mnist5k and digits, and fashion-mnist when Debian's dataset-fashion-mnist is installed."""
    return ["mnist5k", "digits"] + (["fashion-mnist"] if (datasets.FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
                                    else [])
