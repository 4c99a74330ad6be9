"""Which of round 10's guards costs what (docs/bench.md, "Round 10"), on the shipped round-6 rules:

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/guard_probe.py > experiments/bench/guard-probe.txt

For each rule and guard setting (warm-up W, floor f; `metatele.learned.adafac.with_guards`), on the report seeds:
the runs of normal-16-32x6-4 and teacher-16-64-64-4-n32 whose loss rises above its start within 12 steps (the rule
told a 2,000-step run, as in the long part), and the geometric-mean loss of centred-32-256-8-n64 at its horizon.
"""
from __future__ import annotations

import torch

from metatele import checkpoints
from metatele.bench.problems import REPORT_FIRST_SEED, suite
from metatele.bench.run import SEEDS, trajectory
from metatele.bench.scores import long_run_counts
from metatele.learned.adafac import with_guards
from metatele.step import rollout

EARLY = ("normal-16-32x6-4", "teacher-16-64-64-4-n32")
SETTINGS = ((0, 0.0), (2, 0.0), (3, 0.0), (5, 0.0), (0, 0.01), (0, 0.001), (5, 0.01))
torch.set_num_threads(1)
problems = {q.name: q for q in suite(False)}
for name in ("adafac-tele", "adafac"):
    trained = checkpoints.load_pretrained(name)
    for warmup, floor in SETTINGS:
        m = with_guards(trained, warmup, floor)
        out = []
        for p in EARLY:
            m.clock.steps, m.clock.pinned = 2000, True
            loss = rollout(m, problems[p].sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + SEEDS)), 12).loss
            c = long_run_counts(loss)
            out.append(f"{p} above start within 12 steps {c['any_step_above_initial']}/{c['runs']}")
        m.clock.pinned = False
        q = problems["centred-32-256-8-n64"]
        loss = trajectory(q, m, q.sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + SEEDS)), q.steps).loss
        out.append(f"{q.name} geo mean at {q.steps} {long_run_counts(loss)['final_geo_mean']:.3g}")
        print(f"{name} warmup={warmup} floor={floor:g}: " + "; ".join(out), flush=True)
