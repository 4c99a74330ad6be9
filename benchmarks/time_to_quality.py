"""Time to quality, the way MLPerf measures training: meta-train a method from scratch with a given config and stop
as soon as its held-out mean loss at step 100 (on validation seeds, never trained on) reaches a target. The held-out
evaluation runs at the first batch boundary after every `--eval-every` meta-updates, and its time is on the clock.

Prints the wall time, the traj-steps, the meta-updates and the final held-out figure, with the machine's sgemm peak.
Several configs run one after the other in one invocation, so that their times compare on the same machine.

`--device cuda` (or cuda:N) runs it on a GPU; that path is untested (no GPU was lent).

    python benchmarks/time_to_quality.py --config experiments/pretrained-v1/lstm-update-tele.toml \
        --config experiments/speed/lstm-update-tele-fast.toml [--target 4.5] [--max-minutes 30 [--max-minutes 10]]

`--suite ESTIMATOR` (repeatable: tbptt, pes) measures the bench suite's criterion instead, for the size-agnostic
`adafac` meta-trained on the suite's meta-training problems (`metatele.bench.metatrain`): the time until the IQM over
the validation problems' runs of log10(L_adam / L) is above 0, against Adam tuned per problem (CPU only).

    python benchmarks/time_to_quality.py --suite tbptt --suite pes [--nominal-lr 0.001|train] [--max-minutes 40]
        [--eval-every 10]
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from meta_train_throughput import sgemm_peak

from metatele import config, train
from metatele.bench import metatrain as suite_training
from metatele.bench.problems import split
from metatele.bench.run import global_lr
from metatele.learned.adafac import NOMINAL_LR, AdafacSpec
from metatele.options import Parser, device_arg
from metatele.outer.trainer import Progress, meta_train
from metatele.step import rollout
from metatele.tasks.seeds import VALID_FIRST_SEED, train_seeds

TARGETS = {"lstm-update-tele": 4.5, "lstm-update": 9.5}  # held-out mean loss at step 100 (issue 19)
EVAL_STEPS = 100


def time_to_quality(cfg: config.TrainConfig, target: float, valid_tasks: int, eval_every: int, max_minutes: float,
                    device: str) -> dict[str, float]:
    run = train.build(cfg, device)
    family = cfg.family
    valid = family.sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + valid_tasks), device=device)
    state = {"updates": 0, "traj_steps": 0, "last_eval": 0, "held_out": math.inf, "reached": False}
    t0 = time.perf_counter()

    def after_batch(p: Progress, stats: dict[str, float], size: int) -> None:
        windows = int(stats.get("windows", 0))
        state["updates"] += windows
        state["traj_steps"] += windows * cfg.trainer.unroll * size
        if state["updates"] - state["last_eval"] >= eval_every:
            state["last_eval"] = state["updates"]
            with torch.no_grad():
                loss = rollout(run.model, valid, EVAL_STEPS).loss[EVAL_STEPS]
            state["held_out"] = float(loss.double().mean()) if torch.isfinite(loss).all() else math.inf
            state["reached"] = state["held_out"] <= target
            print(f"  {time.perf_counter() - t0:7.1f} s  {state['updates']:6d} meta-updates  "
                  f"held-out mean loss @{EVAL_STEPS}: {state['held_out']:.3f}", flush=True)

    def stop() -> bool:
        return state["reached"] or time.perf_counter() - t0 > 60 * max_minutes

    meta_train(cfg.trainer, run.model, run.opt, run.progress, after_batch=after_batch, stop=stop,
               sample=lambda first, count: family.sample(train_seeds(cfg.trainer.seed, first, count), device=device))
    return {**state, "seconds": time.perf_counter() - t0}


def suite_time_to_quality(estimator: str, eval_every: int, max_minutes: float, nominal_lr: float
                          ) -> dict[str, object]:
    """Meta-train `adafac` (untrained: Adam at `nominal_lr`) with `estimator` until the validation IQM vs tuned Adam
    is > 0 or the time is up."""
    cfg = suite_training.MetaTrainConfig(spec=AdafacSpec("adafac", nominal_lr=nominal_lr), estimator=estimator,
                                         eval_every=eval_every, minutes=max_minutes, stop_at_adam=True)
    adam = suite_training.tuned_adam_finals(split("validation"), cfg.select_seeds)
    with tempfile.TemporaryDirectory() as out:
        return suite_training.meta_train(cfg, Path(out), log=False, adam_finals=adam)


def main() -> None:
    p = Parser(prog="time_to_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=[], help="TOML config (repeatable: run one after the other)")
    p.add_argument("--suite", action="append", default=[], choices=("tbptt", "pes"),
                   help="the suite's criterion for adafac meta-trained with this estimator (repeatable)")
    p.add_argument("--nominal-lr", default=str(NOMINAL_LR), help="--suite: the untrained rule is Adam at this lr; "
                   "'train': the Adam lr best across the meta-training problems (default %(default)s)")
    p.add_argument("--set", action="append", default=[], help="override for every config, key=value")
    p.add_argument("--target", type=float, help="held-out mean loss at step 100 (default: 4.5 for lstm-update-tele, "
                   "9.5 for lstm-update)")
    p.add_argument("--valid-tasks", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100, help="meta-updates between held-out evaluations (--suite: "
                   "batches between validation checks)")
    p.add_argument("--max-minutes", type=float, action="append",
                   help="give up after this long (default 30; once for all configs, or once per config in order)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()
    if bool(a.config) == bool(a.suite):
        p.error("give --config or --suite")
    if a.suite and str(a.device) != "cpu":
        p.error("--suite runs on the CPU only")
    peak = sgemm_peak(device=a.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {a.device}; "
          f"sgemm peak {peak:.1f} GFLOP/s")
    limits = a.max_minutes or [30.0]
    runs = a.config or a.suite
    if len(limits) not in (1, len(runs)):
        p.error("give --max-minutes once, or once per --config / --suite")
    limits = limits * len(runs) if len(limits) == 1 else limits
    if a.suite:
        nominal = global_lr(split("train")) if a.nominal_lr == "train" else float(a.nominal_lr)
        print(f"--suite: adafac's nominal lr {nominal:.4g}")
    for estimator, max_minutes in zip(a.suite, limits):
        r = suite_time_to_quality(estimator, a.eval_every, max_minutes, nominal)
        verdict = (f"reached in {r['reached_minutes']:.2f} min (batch {r['reached_batch']})"
                   if r["reached_batch"] is not None
                   else f"NOT reached in {r['minutes']:.2f} min ({r['batches']} batches)")
        print(f"adafac, {estimator}: validation IQM of log10(L_adam/L) > 0 {verdict}; sgemm peak {peak:.1f} GFLOP/s")
    for path, max_minutes in zip(a.config, limits):
        cfg = config.load(path, a.set, eval_every=0, ckpt_every=0)
        target = a.target if a.target is not None else TARGETS.get(cfg.spec.method, math.nan)
        print(f"{path}: {cfg.spec.method}, target {target}")
        r = time_to_quality(cfg, target, a.valid_tasks, a.eval_every, max_minutes, a.device)
        verdict = "reached" if r["reached"] else "NOT reached"
        print(f"{path}: {verdict} in {r['seconds']:.1f} s ({r['seconds'] / 60:.2f} min), {r['traj_steps']:.0f} traj-steps, "
              f"{r['updates']:.0f} meta-updates, held-out mean loss @{EVAL_STEPS} {r['held_out']:.3f} "
              f"(target {target}); sgemm peak {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
