"""Add round 10's guards to trained adafac checkpoints without retraining (docs/bench.md, "Round 10"):

    PYTHONPATH=. python experiments/bench/guard.py SRC OUT [--warmup 5] [--floor 0.01]

Reads SRC/adafac and SRC/adafac-tele (model.safetensors), and writes OUT/adafac and OUT/adafac-tele with the same
meta-parameters and the guards set in their spec (`AdafacSpec.warmup`, `AdafacSpec.floor`); the metadata records the
source. `reproduce.py --checkpoints OUT` then evaluates them. Errors are one line, exit 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from metatele import checkpoints
from metatele.errors import MetateleError
from metatele.learned.adafac import with_guards

p = argparse.ArgumentParser()
p.add_argument("src")
p.add_argument("out")
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--floor", type=float, default=0.01)
a = p.parse_args()
try:
    for name in ("adafac", "adafac-tele"):
        path = Path(a.src) / name / checkpoints.MODEL_FILE
        model = checkpoints.load_model(path)
        guarded = with_guards(model, a.warmup, a.floor)
        target = Path(a.out) / name / checkpoints.MODEL_FILE
        if target.exists():
            raise FileExistsError(f"{target} exists; choose another OUT")
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = {k: v for k, v in checkpoints.read(path)[1].items() if k in ("batches", "validation_score")}
        checkpoints.save_model(target, guarded, **extra, guards_added_to=str(path))
        print(f"{target}: {guarded.spec.to_dict()}")
except (MetateleError, ValueError, TypeError, OSError) as e:
    p.exit(2, f"{p.prog}: error: {e}\n")
