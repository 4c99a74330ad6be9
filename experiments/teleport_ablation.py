"""Does the learned teleport itself help? Evaluate a trained lstm-update-tele checkpoint with its
teleport on (as trained) and off (same m1, eps → 0), and lstm-update, on the same unseen tasks.
Prints mean loss with 95% CIs and paired differences (log10) at steps 1, 10, 30, 100.

    python experiments/teleport_ablation.py [--checkpoints checkpoints] [--tasks 64]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from metatele import checkpoints, evaluate, step, tasks
from metatele.meta_optimizers import MetaOptimizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", default=str(checkpoints.pretrained_dir()))
    p.add_argument("--tasks", type=int, default=64)
    a = p.parse_args()
    ck = Path(a.checkpoints)
    tele = checkpoints.load_meta_optimizer(ck / "lstm-update-tele", method="lstm-update-tele")
    off = MetaOptimizer(dataclasses.replace(tele.spec, eps=1e-30))
    off.load_state_dict(tele.state_dict())
    off.spec = dataclasses.replace(off.spec)
    upd = checkpoints.load_meta_optimizer(ck / "lstm-update", method="lstm-update")
    task = evaluate.eval_tasks(tasks.EVAL_FIRST_SEED, a.tasks, tasks.PAPER_WIDTHS, tasks.PAPER_N, "cpu")
    runs = {"lstm-update-tele": step.run(tele, task, 100), "lstm-update-tele, teleport off": step.run(off, task, 100),
            "lstm-update": step.run(upd, task, 100)}
    for s in (1, 10, 30, 100):
        print(f"step {s}:")
        for name, tr in runs.items():
            r = evaluate.summarize(tr.loss[s])
            print(f"  {name:32s} mean {r['loss_mean']:.4g} [{r['loss_ci95_low']:.4g}, {r['loss_ci95_high']:.4g}]"
                  f"  diverged {int(r['n_diverged'])}")
        d = (runs["lstm-update-tele"].loss[s].log10() - runs["lstm-update-tele, teleport off"].loss[s].log10()).double()
        d = d[torch.isfinite(d)]
        half = 1.96 * float(d.std()) / math.sqrt(d.numel())
        print(f"  paired log10(on/off): {float(d.mean()):+.4f} ± {half:.4f} (95% CI; < 0 means teleport helps)")


if __name__ == "__main__":
    main()
