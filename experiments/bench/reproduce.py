"""Reproduce docs/bench.md's tables from the shipped checkpoints (one command):

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/reproduce.py [--quick] [--part main|ablation|long|all]
        [--checkpoints DIR] [--out DIR] [--meta-horizon T]

- main: adafac, adafac-tele and the untrained rule (= Adam at the shipped nominal lr) against the tuned baselines on the meta-training
  and held-out problems → experiments/bench/results/ (TensorBoard runs in runs/bench/), and the teleporting twin
  against `adafac` on the same seeds per problem (`bench.scores.paired_rows`) → results/twin.csv.
- ablation: one lever of the trained adafac removed at a time, on the small held-out problems (≤ 128 units, ≤ 64 inputs) → experiments/bench/ablation/:
  fan-in scaling off (p = 0), progress features blind (T = 10^12, so t/T ≈ 0 at every step), the teleporting twin
  with its teleport off (same update weights).
- paper: the paper's 20-20-20 task (paper-20x3, step 100): adafac-tele against the fixed-size lstm-update-tele on the
  report seeds → experiments/bench/paper.csv.
- long: 10× the meta-training horizon (META_HORIZON) on the small held-out problems, counting runs that end non-finite
  or above their initial loss, with tuned Adam (its lr tuned per problem at the suite horizon) run as long for
  reference → experiments/bench/long.csv.
--checkpoints DIR evaluates DIR/adafac and DIR/adafac-tele instead of the shipped ones, --out DIR writes the outputs
there instead of experiments/bench/ (a candidate's evaluation beside the shipped tables), --meta-horizon T sets the
meta-training horizon the long part multiplies by 10 (the shipped checkpoints': META_HORIZON).
Tuned baselines are cached in experiments/bench/cache/ (keyed by problem, seeds and grid; delete it to recompute).
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from metatele import checkpoints
from metatele.io import atomic_write_csv
from metatele.bench.problems import suite
from metatele.bench.report import report
from metatele.bench.problems import REPORT_FIRST_SEED
from metatele.bench.baselines import make
from metatele.bench.run import SEEDS, TUNE_SEEDS, baselines, run_suite
from metatele.bench.scores import long_run_counts, paired_rows
from metatele.errors import MetateleError
from metatele.evaluation.stats import summarize
from metatele.learned import build
from metatele.step import rollout

HERE = Path(__file__).resolve().parent
LONG_FACTOR = 10
META_HORIZON = 200

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
p.add_argument("--part", choices=("main", "ablation", "long", "paper", "all"), default="all")
p.add_argument("--checkpoints", default=str(checkpoints.pretrained_dir()))
p.add_argument("--out", default=str(HERE), help="folder of the outputs")
p.add_argument("--meta-horizon", type=int, default=META_HORIZON, help="the checkpoints' longest meta-training horizon")
a = p.parse_args()
if a.meta_horizon < 1:
    p.error("--meta-horizon must be a positive integer")
out = Path(a.out)
torch.set_num_threads(1)
ck = Path(a.checkpoints)
try:
    adafac = checkpoints.load_model(ck / "adafac" / checkpoints.MODEL_FILE)
    tele = checkpoints.load_model(ck / "adafac-tele" / checkpoints.MODEL_FILE)
except MetateleError as e:
    p.exit(2, f"{p.prog}: error: {e}\n")
problems = [q for q in suite(a.quick) if q.split in ("train", "heldout")]
heldout = [q for q in problems if q.split == "heldout"]
# the ablation and the 10× run use the held-out problems of at most 128 units per layer and 64 inputs (the CPU budget)
small = [q for q in heldout if max(q.widths[1:-1]) <= 128 and q.widths[0] <= 64]
cache = HERE / "cache"
tag = "-quick" if a.quick else ""

if a.part in ("main", "all"):
    t = time.perf_counter()
    untrained = build(adafac.spec)  # the same rule untrained: Adam at the shipped nominal lr
    untrained.label = "adafac-untrained"
    runs = run_suite(problems, [adafac, tele, untrained], cache=cache)
    report(runs, out / f"results{tag}", Path("runs") / f"bench{tag}")
    atomic_write_csv(out / f"results{tag}" / "twin.csv", paired_rows(runs, tele.name, adafac.name))
    print(f"main: {time.perf_counter() - t:.0f} s")

if a.part in ("ablation", "all"):
    t = time.perf_counter()
    no_fan = copy.deepcopy(adafac)
    no_fan.label = "adafac-no-fanin"
    with torch.no_grad():
        no_fan.net.fan_power.zero_()
    no_progress = copy.deepcopy(adafac)
    no_progress.label = "adafac-no-progress"
    no_progress.clock.steps, no_progress.clock.pinned = 1e12, True  # t/T ≈ 0 at every step
    tele_off = build(replace(tele.spec, method="adafac"))
    tele_off.label = "adafac-tele-no-teleport"
    tele_off.net.load_state_dict(tele.net.state_dict())
    runs = run_suite(small, [adafac, no_fan, no_progress, tele, tele_off], cache=cache)
    report(runs, out / f"ablation{tag}", None)
    print(f"ablation: {time.perf_counter() - t:.0f} s")

if a.part in ("long", "all"):
    t = time.perf_counter()
    rows = []
    for q in small:
        task = q.sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + SEEDS))
        # the reference: Adam at the problem's tuned lr (from the suite's cache), run as long
        adam = replace(make("adam", torch.full((SEEDS,), baselines(q, task, SEEDS, TUNE_SEEDS, "cpu", cache)[1]["adam"])),
                       name="adam-tuned")
        for m in (adafac, tele, adam):
            steps = LONG_FACTOR * (q.steps if a.quick else a.meta_horizon)
            loss = rollout(m, task, steps).loss
            rows.append({"problem": q.name, "method": m.name, "steps": steps, **long_run_counts(loss),
                         "final_at_meta_horizon_geo_mean": 10 ** float(loss[a.meta_horizon if not a.quick else q.steps].log10().mean())
                         if bool(torch.isfinite(loss).all()) else float("nan")})
            print(rows[-1], flush=True)
    atomic_write_csv(out / f"long{tag}.csv", rows)
    print(f"long: {time.perf_counter() - t:.0f} s")

if a.part in ("paper", "all") and not a.quick:
    q = next(x for x in problems if x.name == "paper-20x3")
    task = q.sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + SEEDS))
    rows = []
    for m in (checkpoints.load_pretrained("lstm-update-tele"), tele, adafac):
        final = rollout(m, task, q.steps).loss[-1]
        rows.append({"method": m.name, "steps": q.steps,
                     **{k: v for k, v in summarize(final).items() if k.startswith("geo") or k == "n_nonfinite"}})
        print(rows[-1], flush=True)
    atomic_write_csv(out / "paper.csv", rows)
