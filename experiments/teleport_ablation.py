"""Does the learned teleport itself help? Evaluate a trained lstm-update-tele checkpoint with its teleport on
(as trained) and off (the same m1 with no teleport: `MetaOptimizer.without_teleport()`), and lstm-update, on the
same unseen tasks. Prints mean loss with 95% CIs and paired differences (log10) at steps 1, 10, 30, 100.

    python experiments/teleport_ablation.py [--checkpoints checkpoints] [--tasks 64]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from metatele import checkpoints, step, tasks
from metatele.evaluation.stats import summarize
from metatele.tasks.seeds import EVAL_FIRST_SEED


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", default=str(checkpoints.pretrained_dir()))
    p.add_argument("--tasks", type=int, default=64)
    a = p.parse_args()
    ck = Path(a.checkpoints)
    tele = checkpoints.load_model(ck / "lstm-update-tele", method="lstm-update-tele")
    upd = checkpoints.load_model(ck / "lstm-update", method="lstm-update")
    task = tasks.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + a.tasks))
    runs = {"lstm-update-tele": step.rollout(tele, task, 100),
            "lstm-update-tele, teleport off": step.rollout(tele.without_teleport(), task, 100),
            "lstm-update": step.rollout(upd, task, 100)}
    for s in (1, 10, 30, 100):
        print(f"step {s}:")
        for name, tr in runs.items():
            r = summarize(tr.loss[s])
            print(f"  {name:32s} geometric mean {r['geo_mean']:.4g} [{r['geo_ci95_low']:.4g}, {r['geo_ci95_high']:.4g}]"
                  f"  mean {r['loss_mean']:.4g}  non-finite {int(r['n_nonfinite'])}")
        d = (runs["lstm-update-tele"].loss[s].log10() - runs["lstm-update-tele, teleport off"].loss[s].log10()).double()
        d = d[torch.isfinite(d)]
        half = 1.96 * float(d.std()) / math.sqrt(d.numel())
        print(f"  paired log10(on/off): {float(d.mean()):+.4f} ± {half:.4f} (95% CI; < 0 means teleport helps)")


if __name__ == "__main__":
    main()
