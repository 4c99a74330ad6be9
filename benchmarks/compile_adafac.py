"""Issue 27's `torch.compile` lever on the CPU: `adafac`'s per-element network, and its feature computation, compiled
(dynamic shapes) against eager, in evaluation rollouts of one suite problem. Eager and compiled runs alternate in
rounds (median over rounds), so that load from other processes hits both alike; prints the compile warm-up, the
times, their ratio, the largest relative difference of the losses, and the sgemm peak.

    python benchmarks/compile_adafac.py [--problem digits-64-32-10] [--tasks 8] [--steps 40] [--rounds 3]
        [--device cpu]
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from meta_train_throughput import sgemm_peak

from metatele.bench.problems import suite
from metatele.learned import build
from metatele.learned.adafac import AdafacOptimizer, AdafacSpec, AdafacUpdate
from metatele.options import Parser, device_arg
from metatele.step import rollout


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def compare(model: AdafacOptimizer, part: str, task: object, steps: int, rounds: int) -> None:
    """Eager against compiled `part` ("mlp": the network; "features": `AdafacUpdate.features`)."""
    if part == "mlp":
        eager, compiled = model.net.mlp, torch.compile(model.net.mlp, dynamic=True)

        def use(mod: object) -> None:
            model.net.mlp = mod
    else:
        eager, compiled = None, torch.compile(AdafacUpdate.features, dynamic=True).__get__(model.rule)

        def use(fn: object) -> None:
            if fn is None:
                model.rule.__dict__.pop("features", None)
            else:
                model.rule.features = fn
    use(compiled)
    warm, _ = _timed(lambda: rollout(model, task, 3).loss)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    losses = {}
    for _ in range(rounds):
        for name, impl in (("eager", eager), ("compiled", compiled)):
            use(impl)
            sec, losses[name] = _timed(lambda: rollout(model, task, steps).loss)
            times[name].append(sec)
    use(eager)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    diff = float(((losses["eager"] - losses["compiled"]).abs() / losses["eager"].abs()).max())
    print(f"{part:8s}: compile warm-up {warm:.1f} s; {steps} steps eager {e:.3f} s, compiled {c:.3f} s "
          f"({e / c:.2f}x); max relative loss difference {diff:.1e}", flush=True)


def main() -> None:
    p = Parser(prog="compile_adafac.py", description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="digits-64-32-10", help="a suite problem")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()
    problems = {q.name: q for q in suite()}
    if a.problem not in problems:
        p.error(f"--problem must be one of {', '.join(problems)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {a.device}; "
          f"sgemm peak {sgemm_peak(device=a.device):.1f} GFLOP/s")
    task = problems[a.problem].sample(range(a.tasks), device=a.device)
    torch.manual_seed(0)
    model = build(AdafacSpec("adafac")).to(a.device)
    with torch.no_grad():  # a trained-like head, so the network's output matters
        model.net.mlp[-1].weight.normal_(0, 0.1)
    for part in ("mlp", "features"):
        compare(model, part, task, a.steps, a.rounds)


if __name__ == "__main__":
    main()
