"""Why more torch threads make metatele slower on a busy machine, and the default `--threads 1`.

Times one evaluation like compare's (the shipped lstm-update-tele, GD and Adam on 64 of the paper's 20×20
tasks, 100 steps) in fresh processes, with 1 and with all cores' threads, on an idle machine and while CPU
hogs (`while 1: pass`, one per core) compete for every core; and, to find the cause, with OpenMP told to
sleep rather than spin while it waits (OMP_WAIT_POLICY=PASSIVE). It also counts the ATen ops of the
evaluation and their mean time (torch.profiler, 1 thread): tens of microseconds each, so a join that waits
for a descheduled partner thread (a scheduler time slice, milliseconds) costs far more than the op itself. Prints
seconds and ratios measured in one run, and the sgemm peak of one thread.

CPU only, by design: it measures torch's CPU threads against CPU hogs, so it has no --device option (a GPU run's
kernels do not use these threads).

    python benchmarks/threads.py [--repeats 3] [--hogs 0 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORK = """
import json, time, torch
from metatele import checkpoints, tasks
from metatele.evaluation import compare
from metatele.methods import baseline
torch.set_num_threads({threads})
test = tasks.sample(range(10**9, 10**9 + 64))
methods = [compare.Entry(checkpoints.load_pretrained("lstm-update-tele"), {{}}),
           compare.Entry(baseline("gd"), {{"lr": 3e-4}}), compare.Entry(baseline("adam", lr=1e-3), {{"lr": 1e-3}})]
compare.evaluate(methods[:1], tasks.sample(range(10**9, 10**9 + 2)), 2, progress=False)  # warm up
t0 = time.perf_counter()
compare.evaluate(methods, test, 100, progress=False)
print(json.dumps(time.perf_counter() - t0))
"""

PROFILE = WORK.replace("t0 = time.perf_counter()", "prof = torch.profiler.profile(); prof.__enter__()").replace(
    "print(json.dumps(time.perf_counter() - t0))",
    "prof.__exit__(None, None, None); ev = [e for e in prof.events() if e.name.startswith('aten::')]; "
    "print(json.dumps([len(ev), sum(e.self_cpu_time_total for e in ev) / len(ev)]))")

SGEMM = """
import time, torch
torch.set_num_threads(1)
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
a @ b
t0 = time.perf_counter()
for _ in range(20):
    a @ b
print(2 * 1024**3 * 20 / (time.perf_counter() - t0) / 1e9)
"""


def run(code: str, env: dict[str, str]) -> object:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " CPU only: it measures torch's CPU threads, "
                                "so it has no --device option.", allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    p.add_argument("--hogs", type=int, nargs="+", help="numbers of CPU hogs to measure under (default 0 and one per core)")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    hog_counts = a.hogs if a.hogs is not None else [0, cores]
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    settings = [(f"{t} thread(s){', passive wait' if passive else ''}", t, passive)
                for t, passive in ((1, False), (cores, False), (cores, True))]
    results: dict[str, float] = {}
    for hogs in hog_counts:
        procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(hogs)]
        try:
            time.sleep(0.5 if hogs else 0)
            for name, threads, passive in settings:
                env = {**base, **({"OMP_WAIT_POLICY": "PASSIVE"} if passive else {})}
                times = sorted(run(WORK.format(threads=threads), env) for _ in range(a.repeats))
                results[f"{name}, {hogs} hogs"] = times[len(times) // 2]
                print(f"{name:>24}, {hogs} CPU hogs: {times[len(times) // 2]:7.2f} s  (runs: "
                      f"{', '.join(f'{t:.2f}' for t in times)})", flush=True)
        finally:
            for q in procs:
                q.kill()
                q.wait()
    for hogs in hog_counts:
        one = results[f"1 thread(s), {hogs} hogs"]
        print(f"{hogs} hogs: {cores} threads / 1 thread = {results[f'{cores} thread(s), {hogs} hogs'] / one:.2f}×; "
              f"{cores} threads with passive wait / 1 thread = "
              f"{results[f'{cores} thread(s), passive wait, {hogs} hogs'] / one:.2f}×")
    ops, mean_us = run(PROFILE.format(threads=1), base)
    print(f"ATen ops in the timed evaluation: {ops}, mean self CPU time {mean_us:.1f} µs per op (1 thread)")
    print(f"sgemm peak, 1 thread, 1024²: {run(SGEMM, base):.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
