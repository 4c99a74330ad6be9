"""Meta-train one adafac checkpoint on the bench suite's meta-training problems (selected on its validation problems).

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/metatrain.py OUT [--teleport] [--no-augment]
                                                                          [--minutes M | --batches N]
                                                                          [--estimator pes --particles 8 --sigma 0.01]

Round 4's checkpoints, both at once, one thread each, 25 minutes wall each on the 2-core machine:

    metatrain.py experiments/bench/adafac --minutes 25 --nominal-lr train --mix 0 --meta-lr 1e-4 --scalar-lr 3e-4 \
        --eval-every 10
    metatrain.py experiments/bench/adafac-tele --teleport --gate-bias -6 (the rest as above)

Round 5 (both at once, 75 minutes wall each, from round 4's `adafac` rule; the teleporting twin with the rescaling
teleport, its gate fresh at sigmoid(0) with magnitude 0.1 and meta lr 1e-3):

    metatrain.py experiments/bench/round5-adafac --init ROUND4_ADAFAC --minutes 75 --eval-every 10 --average 0.95 \
        --select-seeds 8 --meta-lr 3e-5 --scalar-lr 3e-5
    metatrain.py experiments/bench/round5-adafac-tele --teleport --group diag --magnitude 0.1 --gate-bias 0 \
        --gate-lr 1e-3 (the rest as above)

with ROUND4_ADAFAC the round-4 checkpoint (`git show 0e89b1b:checkpoints/adafac/model.safetensors > FILE`).
The shipped round-6 checkpoints (both at once, 30 minutes wall each, from scratch at nominal lr 10^-2; the
20-minute runs in experiments/bench/round6-adafac*/ are the same commands with --minutes 20):

    metatrain.py experiments/bench/round6-30min-adafac --nominal-lr 0.01 --mix 0 --minutes 30 --eval-every 10 \
        --average 0.95 --select-seeds 8 --meta-lr 3e-5 --scalar-lr 3e-5
    metatrain.py experiments/bench/round6-30min-adafac-tele --teleport --group diag --magnitude 0.1 --gate-bias 0 \
        --gate-lr 1e-3 (the rest as above)

Round 7 (not shipped; experiments/bench/round7-adafac*/): the round-6 commands with `--minutes 85`.
Round 8 (experiments/bench/round8-adafac*/): a horizon curriculum continuing the round-6 checkpoints, inner horizons
100–1,000 and selection at a 1,000-step validation, 75 minutes wall each, both at once (ROUND6 = the round-6
checkpoint of the same name, `git show 2e50501:checkpoints/adafac/model.safetensors > FILE`):

    metatrain.py experiments/bench/round8-adafac --init ROUND6_ADAFAC --steps 1000 --min-steps 100 --val-steps 1000 \
        --minutes 75 --eval-every 10 --average 0.95 --select-seeds 8 --meta-lr 3e-5 --scalar-lr 3e-5
    metatrain.py experiments/bench/round8-adafac-tele --init ROUND6_ADAFAC_TELE --teleport --group diag \
        --magnitude 0.1 --gate-bias 0 --gate-lr 1e-3 (the rest as above)

Round 9: the round-8 `adafac` continued to 90 minutes (`metatrain.py experiments/bench/round8-adafac --resume
--minutes 90`: a resumed run takes its settings from its training state, train_state.safetensors, written at every
validation, and equals one that never stopped), and its teleporting twin started from the round-8 `adafac` rule at
75 minutes, its gate fresh, for 15 minutes (both at once; 120 minutes of meta-training each, counting round 6's 30):

    metatrain.py experiments/bench/round9-adafac-tele --init ROUND8_ADAFAC_75MIN --teleport --group diag \
        --magnitude 0.1 --gate-bias 0 --gate-lr 1e-3 --steps 1000 --min-steps 100 --val-steps 1000 --minutes 15 \
        --eval-every 10 --average 0.95 --select-seeds 8 --meta-lr 3e-5 --scalar-lr 3e-5

Round 10 (experiments/bench/round10-adafac*/, not shipped): the round-6 commands with the guards on and round 6's
batch counts, both at once: `--warmup 5 --floor 0.01 --batches 820` (`adafac`) and `--batches 599` (`adafac-tele`).

A wall-clock budget depends on the machine; to reproduce them exactly, give the batch count each reached instead
(`--batches N`, each folder's summary.json; nothing in the loop reads the clock but the budget check). Round 3's
(experiments/bench/round3-adafac*/) used the defaults with `--minutes 55`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metatele import checkpoints
from metatele.bench.metatrain import MetaTrainConfig, meta_train, resumed_config, tuned_adam_finals
from metatele.bench.problems import split
from metatele.bench.run import global_lr
from metatele.errors import MetateleError
from metatele.learned.adafac import AdafacSpec

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--teleport", action="store_true")
p.add_argument("--no-augment", action="store_true")
budget = p.add_mutually_exclusive_group()
budget.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget (machine-dependent)")
budget.add_argument("--batches", type=int, default=None, help="exact number of meta-training batches (no time limit)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--estimator", choices=("tbptt", "pes"), default="tbptt")
p.add_argument("--particles", type=int, default=8, help="pes: perturbed copies in antithetic pairs")
p.add_argument("--sigma", type=float, default=0.01, help="pes: perturbation standard deviation")
p.add_argument("--eval-every", type=int, default=20, help="batches between validation checks")
p.add_argument("--mix", type=float, default=0.1, help="the bound of adafac's free term (0: none)")
p.add_argument("--gate-bias", type=float, default=-3.0, help="adafac-tele: the gate starts at sigmoid(gate-bias)")
p.add_argument("--meta-lr", type=float, default=3e-3, help="the MLP's meta learning rate")
p.add_argument("--scalar-lr", type=float, default=1e-2, help="the global scalars' meta learning rate")
p.add_argument("--gate-lr", type=float, default=None,
               help="adafac-tele: the gate's meta learning rate (default: --meta-lr)")
p.add_argument("--nominal-lr", default="0.001", help="the untrained rule is Adam at this lr; 'train': the Adam lr of "
               "the grid best across the suite's meta-training problems (metatele.bench.run.global_lr)")
p.add_argument("--init", default=None, help="start from this adafac checkpoint (its nominal lr and mix replace "
               "--nominal-lr and --mix): all of it if its spec is the run's, else its update rule (a teleporting "
               "twin's gate then starts fresh)")
p.add_argument("--group", choices=("gl", "diag"), default="gl", help="adafac-tele: the teleport's group")
p.add_argument("--magnitude", type=float, default=0.05,
               help="adafac-tele: the teleport's size per step before the gate")
p.add_argument("--warmup", type=int, default=0, help="guard: the update's linear warm-up, in steps (0: none)")
p.add_argument("--floor", type=float, default=0.0,
               help="guard: Adam's denominator at least FLOOR x the first gradient's RMS, per tensor (0: none)")
p.add_argument("--average", type=float, default=0.0, help="validate and save the EMA of the meta-parameters (decay)")
p.add_argument("--select-seeds", type=int, default=4, help="selection seeds per validation problem")
p.add_argument("--steps", type=int, default=200, help="longest inner horizon of the meta-training trajectories")
p.add_argument("--min-steps", type=int, default=50, help="shortest (log-uniform in between)")
p.add_argument("--val-steps", type=int, default=None,
               help="validation horizon for checkpoint selection (default: each validation problem's own)")
p.add_argument("--resume", action="store_true",
               help="continue OUT's training state with its own settings (give only a larger --minutes or --batches)")
a = p.parse_args()
torch.set_num_threads(1)
out = Path(a.out)
budget_args = ("out", "resume", "minutes", "batches")
if a.resume and any(v != p.get_default(k) for k, v in vars(a).items() if k not in budget_args):
    p.error("--resume continues the training state's own settings: give only OUT, --minutes or --batches")
try:
    if a.resume:
        cfg = resumed_config(out, float("inf") if a.batches else a.minutes, a.batches or 10**6)
    else:
        if a.init:
            source = checkpoints.load_model(a.init).spec
            nominal, mix = source.nominal_lr, source.mix
        else:
            nominal = global_lr(split("train")) if a.nominal_lr == "train" else float(a.nominal_lr)
            mix = a.mix
        spec = AdafacSpec("adafac-tele" if a.teleport else "adafac", nominal_lr=nominal, mix=mix,
                          gate_bias=a.gate_bias, group=a.group, magnitude=a.magnitude, warmup=a.warmup,
                          floor=a.floor)
        cfg = MetaTrainConfig(spec=spec, augment=not a.no_augment, init=a.init, average=a.average,
                              select_seeds=a.select_seeds, minutes=float("inf") if a.batches else a.minutes,
                              max_batches=a.batches or 10**6, seed=a.seed, eval_every=a.eval_every,
                              estimator=a.estimator, particles=a.particles, sigma=a.sigma, meta_lr=a.meta_lr,
                              scalar_lr=a.scalar_lr, gate_lr=a.gate_lr, steps=a.steps, min_steps=a.min_steps,
                              val_steps=a.val_steps)
    print(f"nominal lr {cfg.spec.nominal_lr:.4g}", flush=True)
    config = json.dumps({"spec": vars(cfg.spec), **{k: (None if v == float("inf") else v)
                                                     for k, v in vars(cfg).items() if k != "spec"}}, indent=1)
    summary = meta_train(cfg, out, resume=a.resume,
                         adam_finals=tuned_adam_finals(split("validation"), cfg.select_seeds, cfg.val_steps),
                         started=lambda: (out / ("config-resumed.json" if a.resume else "config.json")).write_text(config))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
except (MetateleError, ValueError, OSError) as e:
    p.exit(2, f"{p.prog}: error: {e}\n")
print(summary)
