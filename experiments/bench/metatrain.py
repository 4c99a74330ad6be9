"""Meta-train one adafac checkpoint on the bench suite's meta-training problems (selected on its validation problems).

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/metatrain.py OUT [--teleport] [--no-augment] [--minutes M]

The shipped checkpoints: `experiments/bench/metatrain.py experiments/bench/adafac --minutes 60` and the same with
`--teleport` into experiments/bench/adafac-tele (both runs at once, one thread each, on the shared 2-core machine).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metatele.bench.metatrain import MetaTrainConfig, meta_train
from metatele.learned.adafac import AdafacSpec

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--teleport", action="store_true")
p.add_argument("--no-augment", action="store_true")
p.add_argument("--minutes", type=float, default=60.0)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(1)
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
cfg = MetaTrainConfig(spec=AdafacSpec("adafac-tele" if a.teleport else "adafac"), augment=not a.no_augment, minutes=a.minutes,
                      seed=a.seed, eval_every=20)
(out / "config.json").write_text(json.dumps({"spec": vars(cfg.spec), **{k: v for k, v in vars(cfg).items()
                                                                         if k != "spec"}}, indent=1))
summary = meta_train(cfg, out)
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(summary)
