"""`metatele generalization`: the paper's §5 generalization experiments (its Table 1 and Fig. 4) on our data:
the plan (`plan`), training (`run`), the two parts (`correlation`, `teleport`: run → rows) and the report
(`report`, with `main`).

The network is the paper's bias-free LeakyReLU(0.1) MLP d0-16-10-10 trained by SGD (lr 1e-2, mini-batch 20;
an epoch is ⌊N/20⌋ steps). A run's seed draws its initial weights (U(±1/√fan_in), as nn.Linear) and its own
order over the training set (`metatele.tasks.ClassificationFamily`; the paper used one sequential order).

(a) Correlation. `runs` runs in each of `seed_sets` disjoint seed sets (A, B, ...; seed (i + 1)·54321 for run i,
the paper's init seeds). At the final weights, on `measure_batches` batches of 200 training samples (one seeded
draw shared by all runs):
- phi: sharpness, the mean loss increase over the paper's radii and antithetic isotropic directions;
- phi_paper: the paper's statistic, the mean perturbed loss (with L(w)) over uniform positive directions;
- psi: orbit curvature on the 200-sample batches (the least-squares extension at the 16-wide layer, as the
  paper computes it);
- psi_exact: orbit curvature on the first `exact_batch` samples of each batch, where the orbit is the exact
  level-set action.
Pearson and Spearman correlations (bootstrap 95% CIs) with the validation loss and with the generalization gap
(validation − training loss, both on the full sets at the final weights), per seed set and pooled.

(b) Teleport. `teleport_seeds` runs train to epoch `teleport_epoch`; each is copied into the variants none,
random (a random group element of the largest size the ascent can reach) and the four objectives of
`metatele.teleport.targets`, teleported once, and all train on to `epochs`. Groups:
- gl: the paper's GL(k) action, exact on a teleport batch of `exact_batch` samples (the paper used 2000 samples
  and an approximate action; here no exact action exists beyond 16), so the function off that batch changes:
  the change of the training and validation loss at the teleport is reported;
- diag: positive rescaling, which keeps the function on all data.
The objective is evaluated on a 200-sample probe batch that contains the teleport batch, with `teleport_dirs`
fixed draws (with 4 sharpness directions the ascent fits those directions: the objective fell 28–44% while φ
measured along 16 other directions rose, on two mnist5k seeds); φ and ψ are re-measured on the probe before and
after with other random draws, which is what the tables report next to the objective's own change. Validation loss and accuracy per epoch are compared
with the no-teleport copy of the same seed (paired differences, Student-t 95% CIs over seeds).
"""
from __future__ import annotations

from metatele.studies.generalization.correlation import correlation_study, correlation_table
from metatele.studies.generalization.plan import FULL, GROUPS, MEASURES, QUICK, VARIANTS, Plan, default_datasets
from metatele.studies.generalization.report import main
from metatele.studies.generalization.teleport import teleport_study, teleport_table

__all__ = ["Plan", "FULL", "QUICK", "VARIANTS", "MEASURES", "GROUPS", "default_datasets", "correlation_study",
           "correlation_table", "teleport_study", "teleport_table", "main"]
