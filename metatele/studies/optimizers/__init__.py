"""Standard torch optimizers with and without teleportation, on real data (`metatele optimizers`): the plan
(`plan`), running it (`run`), its rows (`rows`) and the report (`report`, with `main`).

The protocol of Zhao et al. (ICLR 2024, Fig. 5; docs/teleportation.md §7), run through the user-facing API
(`metatele.teleport.sequential.Teleporter`) on an `nn.Sequential`:
- a bias-free MLP d0-16-10-10 with LeakyReLU(0.1) (784-16-10-10 on MNIST), PyTorch's default nn.Linear
  initialization under torch.manual_seed((r + 1)·54321) for run r, cross-entropy, mini-batches of 20 in an
  order reshuffled every epoch by a generator with the same seed (so every arm of a seed sees the same
  batches), the last partial batch dropped;
- SGD, SGD + momentum 0.9, AdaGrad, RMSProp and Adam; each optimizer's lr is tuned without teleport on the
  validation split over a log grid of multiples of the paper's lr (criterion: mean validation loss at the
  last epoch over `tune_seeds` seeds disjoint from the reported ones), then used by every arm;
- the paper's schedule: 8 teleports, on the first 8 mini-batches of epoch 2 (SGD, AdaGrad) or epoch 0
  (momentum, RMSProp, Adam), each 10 normalized gradient-ascent steps on ‖∇L‖² (‖T‖ ≤ 0.3 per layer).
  The paper ascends on 200 samples with an approximate action; the exact action allows at most 16 samples
  when both hidden layers move (their inputs are 784 and 16 wide), so the arms are:
  "none"; "teleport" (both layers, 16 samples, optimizer state kept); "teleport-reset" (the same, state
  reset); "random" (both layers, 16 samples, a random T of the same per-layer norm as the "teleport" arm of
  the seed had on average, or 0.3 if none of its teleports was applied: the control); "teleport-layer1"
  and "teleport-layer1-reset" (first hidden layer only, whose input is 784 wide, on 200 samples: the
  paper's batch size, exactly; on digits, 32 = 64 / 2; state kept or reset).
Metrics per epoch (epoch 0 = before training): the loss on the whole training split, the validation loss
and accuracy. Time is training time only (teleports included, evaluation excluded) on one thread, measured
as the process's CPU seconds on --device cpu: on an otherwise idle core that equals wall-clock, and unlike
wall-clock it is not inflated by other jobs on a shared machine. Wall-clock seconds are recorded beside it
(runs.csv), and on CUDA they are the clock.
"""
from __future__ import annotations

from metatele.studies.common import make_mlp
from metatele.studies.optimizers.plan import ARMS, OPTIMIZERS, QUICK, Arm, OptimizerSpec, StudyConfig
from metatele.studies.optimizers.report import OUTPUT_FILES, main, markdown, plot, write_outputs
from metatele.studies.optimizers.rows import curve_rows, difference_rows, report_epochs, teleport_rows
from metatele.studies.optimizers.run import RunResult, StudyResult, run_study, train_run, tune_lr

__all__ = ["OptimizerSpec", "Arm", "OPTIMIZERS", "ARMS", "QUICK", "StudyConfig", "RunResult", "StudyResult",
           "make_mlp", "train_run", "tune_lr", "run_study", "curve_rows", "difference_rows", "report_epochs",
           "teleport_rows", "markdown", "plot", "write_outputs", "OUTPUT_FILES", "main"]
