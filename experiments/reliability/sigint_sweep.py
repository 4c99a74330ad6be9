"""Ctrl-C at random moments of `metatele train`: start-up, imports, building, training, saving.

Runs the program N times (one at a time), sends SIGINT after a delay drawn uniformly from [0, T] seconds and
records the exit status, the number of stderr lines, whether a traceback was printed and how far the run had
got. Usage: python experiments/reliability/sigint_sweep.py [N] [T] [program: module|script]
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

LONG = ["--no-progress", "--set", "hidden=8", "--set", "trajectories=4000", "--set", "batch=4", "--set", "steps=10",
        "--set", "eval_every=0", "--set", "ckpt_every=1"]


def main(n: int = 40, horizon: float = 3.0, program: str = "module") -> None:
    cmd = [sys.executable, "-m", "metatele"] if program == "module" else [str(Path(sys.executable).parent / "metatele")]
    rng = random.Random(0)
    tally: Counter[str] = Counter()
    for i in range(n):
        tmp = Path(tempfile.mkdtemp())
        delay = rng.uniform(0.0, horizon)
        p = subprocess.Popen([*cmd, "train", "--out", "o", "--logdir", "tb", *LONG], cwd=tmp, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
        phase = ("training" if (tmp / "o" / "train_state.safetensors").exists() else
                 "building" if (tmp / "o").exists() else "start-up/imports")
        lines = len(err.strip().splitlines())
        ok = p.returncode == 130 and lines <= 1 and "Traceback" not in err
        tally[f"{phase}: {'ok' if ok else 'BAD'}"] += 1
        note = "" if ok else f"  <-- {err.strip()[-300:]!r}"
        print(f"{i:3d} delay {delay:5.2f}s  rc {p.returncode:4d}  stderr lines {lines}  "
              f"traceback {'Traceback' in err}  {phase}{note}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(dict(tally))


if __name__ == "__main__":
    main(*(f(a) for f, a in zip((int, float, str), sys.argv[1:])))
