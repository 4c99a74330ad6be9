"""Where a learned rule's loss rises above its initial loss in a long run, and whether telling it a shorter
horizon helps (docs/bench.md, "Rounds 7-9"):

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/long_probe.py CHECKPOINT [--steps 2000] [--cap T]

Runs CHECKPOINT on the four small held-out problems (the long part of reproduce.py) for --steps steps on the report
seeds. With --cap T the rule's progress features are told a run of T steps (its meta-training horizon; past T
they saturate at their end-of-run values) instead of the run's length. Prints, per problem, the counts of
reproduce.py's long part and, per run, the steps at which the loss is above its initial loss.
"""
from __future__ import annotations

import argparse

import torch

from metatele import checkpoints
from metatele.bench.problems import REPORT_FIRST_SEED, suite
from metatele.bench.run import SEEDS
from metatele.bench.scores import long_run_counts
from metatele.step import rollout

SMALL = ("teacher-16-64-64-4-n32", "teacher-8-8-8-1", "normal-16-32x6-4", "teacher-16-128-4-bias")

p = argparse.ArgumentParser()
p.add_argument("checkpoint")
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--cap", type=float, default=None, help="the horizon the rule is told (default: the run's length)")
a = p.parse_args()
torch.set_num_threads(1)
m = checkpoints.load_model(a.checkpoint)
if a.cap is not None:
    m.clock.steps, m.clock.pinned = a.cap, True
for q in (x for x in suite(False) if x.name in SMALL):
    loss = rollout(m, q.sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + SEEDS)), a.steps).loss  # (steps+1, runs)
    counts = long_run_counts(loss)
    print(f"{q.name} {m.name} steps={a.steps} told={a.cap or a.steps:g}: "
          + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in counts.items()), flush=True)
    above = loss.nan_to_num(float("inf")) > loss[0]
    for r in range(loss.shape[1]):
        if above[:, r].any():
            steps = above[:, r].nonzero().flatten().tolist()
            print(f"  run {r}: initial {float(loss[0, r]):.3g}, min {float(loss[:, r].min()):.3g} at step "
                  f"{int(loss[:, r].argmin())}, above it at {len(steps)} steps {steps[:6]}, max {float(loss[:, r].max()):.3g}",
                  flush=True)
