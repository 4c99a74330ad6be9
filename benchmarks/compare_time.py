"""Wall time of `metatele compare` against issue 27's targets, and where it goes.

Runs each compare command in a fresh process (as `python -m metatele compare ... --no-progress` runs it, into a
fresh output folder), and prints its wall time beside its target, the split (imports; tuning the baselines'
learning rates; loading checkpoints; each method's evaluation rollout, from results.csv; the report: tables, plot,
TensorBoard runs; the rest: interpreter start-up, parsing, sampling tasks), the child's CPU time (user + system:
on a busy machine the wall time also counts the waits for a core), the load average and the sgemm peak of one
thread. Times are for this machine and this moment: compare them as ratios within one run. `--device cuda` (or
cuda:N) runs the compares on a GPU; that path is untested (no GPU was lent).

    python benchmarks/compare_time.py [--device cuda] [--cases defaults steps1000 wide] [--checkpoints DIR]
        [--threads 1] [--again] [--keep DIR]
"""
from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from meta_train_throughput import sgemm_peak

from metatele.options import MAX_THREADS, Parser, device_arg, int_in

CASES = {  # name: (compare arguments, target seconds) from issue 27 point 2
    "defaults": ([], 10.0),
    "steps1000": (["--steps", "1000"], 60.0),
    "wide": (["--widths", "64,64,64", "--tasks", "64", "--steps", "100"], 60.0),
}

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from metatele import entry
from metatele.evaluation import compare, report
split = {"imports": time.perf_counter() - t0}

def timed(module, name, phase):
    f = getattr(module, name)
    def g(*a, **k):
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            split[phase] = split.get(phase, 0.0) + time.perf_counter() - s
    setattr(module, name, g)

timed(compare, "tune", "tuning")
timed(compare, "learned", "loading checkpoints")
timed(compare, "evaluate", "evaluation")
timed(report, "report", "report")
code = entry.main(sys.argv[1:])
print("SPLIT " + json.dumps(split))
sys.exit(code)
"""


def run_case(args: list[str], device: str, threads: int, checkpoints: str | None, folder: Path) -> dict[str, object]:
    """One compare in a fresh process, writing to folder/out and folder/runs: wall and CPU seconds, the split, and
    each method's rollout seconds."""
    argv = ["compare", *args, "--no-progress", "--device", device, "--threads", str(threads),
            "--out", str(folder / "out"), "--logdir", str(folder / "runs")]
    if checkpoints:
        argv += ["--checkpoints", checkpoints]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"compare {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    split = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("SPLIT "))[6:])
    rows = list(csv.DictReader((folder / "out" / "results.csv").open()))
    steps = max(int(row["step"]) for row in rows)  # every method runs as many steps
    methods = {row["method"]: float(row["sec_per_step"]) * steps for row in rows}
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "split": split, "methods": methods}


def show(title: str, res: dict[str, object], target: float) -> None:
    split = dict(res["split"])
    evaluation = split.pop("evaluation", 0.0)
    rest = res["wall"] - sum(split.values()) - evaluation
    print(f"\n{title}: {res['wall']:.1f} s wall (target < {target:g} s: {'met' if res['wall'] < target else 'NOT met'}),"
          f" {res['cpu']:.1f} s CPU; load average {os.getloadavg()[0]:.2f}", flush=True)
    for phase, sec in [*split.items(), ("evaluation", evaluation), ("rest (start-up, tasks, parsing)", rest)]:
        print(f"  {phase:34s} {sec:7.2f} s  {100 * sec / res['wall']:5.1f}%")
    for method, sec in sorted(res["methods"].items(), key=lambda kv: -kv[1]):
        print(f"    {method:32s} {sec:7.2f} s")


def main() -> None:
    p = Parser(prog="compare_time.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="which commands to time")
    p.add_argument("--checkpoints", help="compare's --checkpoints (default: the shipped ones)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=1,
                   help="compare's --threads (default 1, compare's default)")
    p.add_argument("--again", action="store_true",
                   help="run each command a second time into the same output folder (its tuned lrs reused)")
    p.add_argument("--keep", type=Path, help="keep each case's results and TensorBoard runs in KEEP/<case>/{out,runs}")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, device {a.device}, compare --threads {a.threads}; sgemm peak (1 thread, "
          f"1024²) {sgemm_peak(1024, device='cpu'):.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in a.cases:
            args, target = CASES[name]
            folder = (a.keep or Path(scratch)) / name
            title = f"compare {' '.join(args) or '(defaults)'}"
            results[name] = run_case(args, a.device, a.threads, a.checkpoints, folder)
            show(title, results[name], target)
            if a.again:
                results[f"{name} again"] = run_case(args, a.device, a.threads, a.checkpoints, folder)
                show(f"{title}, again (tuned lrs reused)", results[f"{name} again"], target)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
