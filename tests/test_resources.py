"""Resources: a run too big for the memory it may use is one line and exit 2 (refused before allocating where
the size is known up front, else the allocator's failure caught at the CLI boundary), and memory stays flat
in long meta-training."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_cases import Case, Result, run_case
from helpers import HANG, ROOT
from safetensors.torch import save_file

from metatele import checkpoints

LIMIT = 6 * 2**30  # ulimit -v 6291456 (KiB)


def limited(*argv: str) -> Callable[[Path, dict[str, Any]], list[Result]]:
    """A row's process: `metatele argv` under an address-space limit of 6 GiB."""
    def proc(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
        r = subprocess.run([sys.executable, "-m", "metatele", *argv], cwd=tmp, capture_output=True, text=True,
                           timeout=HANG, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)))
        return [(r.returncode, r.stdout, r.stderr)]
    return proc


def wide_family(tmp: Path, ctx: dict[str, Any]) -> None:
    """Setup: tmp/ck, the shipped any-update checkpoint whose metadata says its family has width 4096."""
    tensors, meta = checkpoints.read(checkpoints.pretrained_dir() / "any-update" / checkpoints.MODEL_FILE)
    meta["family"]["width_range"] = [4096, 4096]
    (tmp / "ck").mkdir()
    save_file(tensors, str(tmp / "ck" / checkpoints.MODEL_FILE), metadata={"metatele": json.dumps(meta)})


def nothing_left(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    left = sorted(p.name for p in tmp.iterdir() if p.name != "ck")
    assert not left or left == ["tb"] and not any((tmp / "tb").iterdir()), left


OUT = ["--no-progress", "--out", "res", "--logdir", "tb"]
CASES = [
    pytest.param(Case("huge_widths_are_refused_before_allocating_naming_the_size", [], 2,
                      "64 tasks of widths 4096,4096,4096 need at least 16.0 GiB, but",
                      proc=limited("compare", "--widths", "4096,4096,4096", "--tasks", "64", "--steps", "10", *OUT),
                      check=nothing_left), id="huge_widths_refused_before_allocating"),
    pytest.param(Case("mixture_of_width_4096_runs_out_of_memory_in_one_line", [], 2, "out of memory allocating",
                      proc=limited("train", "--out", "o", "--logdir", "tb", "--method", "any-update", "--no-progress",
                                   "--set", "task=mixture", "--set", "width_range=4096,4096", "--set",
                                   "trajectories=8", "--set", "batch=8")),
                 id="mixture_of_width_4096_out_of_memory", marks=pytest.mark.slow),
    pytest.param(Case("checkpoint_whose_family_has_width_4096_runs_out_of_memory_in_one_line", [], 2,
                      "out of memory allocating", setup=wide_family,
                      proc=limited("eval", "--checkpoint", "ck", "--tasks", "64", "--steps", "10", *OUT),
                      check=nothing_left), id="checkpoint_family_of_width_4096_out_of_memory", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", CASES)
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


@pytest.mark.slow
def test_peak_memory_stays_flat_over_a_long_meta_training(tmp_path):
    """benchmarks/memory.py, scaled down to 1,000 trajectories (125 batches of 8, with held-out evaluation,
    logging and checkpoints every 25): the peak RSS grows by under 10% from 100 to 1,000 trajectories. A leak
    of the autograd graph or of the tasks of each batch (≥ 0.3 MiB per batch) would exceed it."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--trajectories", "1000", "--at", "100", "1000",
                        "--json", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=HANG,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    print(r.stdout)
    assert m["growth"] < 0.10, m
