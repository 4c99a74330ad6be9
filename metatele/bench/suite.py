"""`metatele bench`: resolve the learned optimizers to judge, run the suite and write the report."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from metatele import checkpoints
from metatele.bench.problems import suite
from metatele.bench.report import report
from metatele.bench.run import SEEDS, TUNE_SEEDS, run_suite
from metatele.errors import ConfigError
from metatele.methods.base import Method

__all__ = ["SHIPPED", "SEEDS", "TUNE_SEEDS", "resolve", "main"]

SHIPPED = ("adafac", "adafac-tele")  # judged by default, where checkpoints/<name>/ holds them


def resolve(specs: Sequence[str] | None, device: str | torch.device = "cpu") -> list[Method]:
    """Learned optimizers from shipped names or checkpoint paths (a model.safetensors or its directory); None: the
    shipped SHIPPED ones. Each must be size-agnostic (fixed-size methods run on one shape only)."""
    if specs is None:
        specs = [n for n in SHIPPED if n in checkpoints.shipped_names()]
    out = []
    for s in specs:
        if Path(s).exists():
            model = checkpoints.load_model(s, device=device)
        elif s in checkpoints.shipped_names():
            model = checkpoints.load_pretrained(s, device=device)
        else:
            raise ConfigError(f"--learned {s}: neither a checkpoint path nor a shipped name "
                              f"({', '.join(checkpoints.shipped_names())})")
        if model.spec.fixed_widths:
            raise ConfigError(f"--learned {s}: {model.name} runs only on widths {list(model.spec.fixed_widths)}; "
                              "the suite needs a size-agnostic method")
        out.append(model)
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"two learned optimizers share a name ({', '.join(names)}); each needs its own")
    return out


def main(*, quick: bool, learned: Sequence[str] | None, out: Path, logdir: Path | None, split: str = "all",
         seeds: int = SEEDS, tune_seeds: int = TUNE_SEEDS, device: str = "cpu", progress: bool = True,
         cache: Path | None = None) -> int:
    methods = resolve(learned, device)
    problems = [p for p in suite(quick) if split == "all" or p.split == split]
    start = time.perf_counter()
    runs = run_suite(problems, methods, seeds, tune_seeds, device, progress, cache=cache)
    _, agg = report(runs, out, logdir)
    for a in agg:
        print(f"{a['split']:8s} {a['method']:14s} IQM speedup {a['iqm_speedup']:.2f} "
              f"[{a['iqm_speedup_low']:.2f}, {a['iqm_speedup_high']:.2f}]  beats Adam {a['frac_beats_adam']:.0%}  "
              f"diverged {a['n_diverged']}/{a['runs']}")
    print(f"bench: {len(problems)} problems in {time.perf_counter() - start:.0f} s; wrote {out}/results.md"
          + (f" and TensorBoard runs in {logdir}" if logdir is not None else ""))
    return 0
