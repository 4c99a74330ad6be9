"""Distributed meta-training on gloo: two ranks give the single-process result, resume across rank counts,
agree on stopping, and survive a dead peer with a clear message instead of a hang."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import HANG, wait_for_write
from safetensors.torch import load_file, save_file

from metatele import checkpoints, config, train
from metatele.errors import ConfigError
from metatele.outer import distributed
from metatele.outer.distributed import TIMEOUT_ENV, Solo
from metatele.outer.trainer import train_batch
from metatele.tasks.seeds import train_seeds

# batch 7 splits 4 + 3: the gradient average must weight the ranks by their trajectory counts.
# Float32 parameters after a few Adam steps carry rounding noise amplified by Adam (a coordinate whose gradient is
# ~1e-8 moves by ±lr on its sign): one process on 1 thread and on 2 threads ends 3.4e-5 apart on SMALL and 7e-4
# apart on lstm-update-tele (measured). So the float32 comparison is made on lstm-update against one process on
# the same 2 cores (2 threads), and the teleporting method is compared in float64, where rounding is no issue.
SMALL = dict(method="lstm-update", hidden=16, trajectories=21, batch=7, steps=20, unroll=10, eval_every=2,
             eval_tasks=4, ckpt_every=1)
PAPER64 = dict(method="lstm-update-tele", hidden=16, trajectories=42, batch=7, steps=10, unroll=10, eval_every=0)
TESTS = Path(__file__).resolve().parent
LONG = ["--set", "hidden=8", "--set", "trajectories=4000", "--set", "batch=4", "--set", "steps=10",
        "--set", "eval_every=0", "--set", "ckpt_every=1", "--no-progress"]
TOL = 1e-5  # float32, up to summation order


pytestmark = pytest.mark.usefixtures("one_thread")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for a worker (single node), plus one thread and a collective timeout that only guards against hangs."""
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", TIMEOUT_ENV: "300"}


def _ranks(args: list[str], cwd: Path, world: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, *args], cwd=cwd, env=_rank_env(r, world, port), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(world)]


def test_batches_split_into_disjoint_contiguous_slices_and_small_batches_are_refused():
    for world in range(1, 6):
        for count in range(world, 20):
            slices = [Solo(rank=r, world=world).share(count) for r in range(world)]
            covered = [i for off, n in slices for i in range(off, off + n)]
            assert covered == list(range(count))  # disjoint, contiguous, in rank order, all of them
            assert max(n for _, n in slices) - min(n for _, n in slices) <= 1
    cfg = config.load(trajectories=23, batch=8)  # the last batch holds 7
    Solo(world=7).check(cfg.trainer)
    with pytest.raises(ConfigError, match="batch of 7"):
        Solo(world=8).check(cfg.trainer)


@pytest.mark.parametrize("kw", [{}, {"task": "mixture", "method": "any-update-tele"}])
def test_ranks_sample_the_tasks_of_the_single_process_batch(kw):
    family = config.load(**kw).family
    seeds = train_seeds(0, 7, 7)
    whole = train.rank_tasks(family, seeds, Solo())
    parts = [train.rank_tasks(family, seeds, Solo(rank=r, world=2)) for r in range(2)]
    assert [s for p in parts for s in p.seeds] == seeds
    for m, w in enumerate(whole.init_weights()):  # a mixture's member is the batch's, not each slice's own
        assert torch.equal(torch.cat([p.init_weights()[m] for p in parts]), w)


LEAVES = """
import glob, json, torch
from metatele.outer import distributed
with distributed.from_env() as comm:
    torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])  # the first optimizer imports torch._dynamo
    comm.barrier("a test")
print(json.dumps(sorted(open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm"))))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
def test_leaving_the_group_stops_its_threads_before_interpreter_shutdown(tmp_path):
    """A group that outlives destroy_process_group keeps gloo's threads running into interpreter shutdown,
    where they sometimes abort a rank that had finished (seen in CI: SIGABRT after a successful run)."""
    procs = _ranks(["-c", LEAVES], tmp_path)
    for p in procs:
        out, err = p.communicate(timeout=HANG)
        assert p.returncode == 0, err[-3000:]
        threads = json.loads(out.strip().splitlines()[-1])  # the names of the threads left at the end
        assert not [t for t in threads if "gloo" in t], threads


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_single_process(tmp_path):
    cfg = config.load(**SMALL)
    torch.set_num_threads(2)  # 1 process × 2 threads against 2 processes × 1 thread
    single = train.run(cfg, tmp_path / "single", logdir=tmp_path / "runs" / "single", progress=False)
    args = ["--set=" + f"{k}={v}" for k, v in SMALL.items()]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "metatele", "train", "--out", "two", "--logdir", "runs/two", "--no-progress", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=HANG,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: 21/21 trajectories") == 1  # rank 0 alone reports
    two = checkpoints.load_model(tmp_path / "two")
    diff = _max_diff(single.model.state_dict(), two.state_dict())
    print(f"max |θ_2 ranks − θ_1 process| = {diff:.3g}")
    assert diff <= TOL  # equal up to float summation order
    assert [h["trajectories"] for h in two.metadata["history"]] == [14, 21]  # rank 0's held-out evaluations
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((tmp_path / "runs" / "two").iterdir())) == 1  # one writer
    logged = {}
    for name in ("single", "two"):
        acc = EventAccumulator(str(tmp_path / "runs" / name))
        acc.Reload()
        logged[name] = [e.value for e in acc.Scalars("train/meta_loss")]
    # rank 0 logs the meta-loss of all 7 tasks (4 on rank 0, 3 on rank 1), weighted as one process would
    assert logged["two"] == pytest.approx(logged["single"], rel=1e-5)


def float64_training(kw: dict, out: str) -> None:
    """Meta-train cfg's batches in float64 through the trainer with this process's communicator (from the
    environment: one rank of a group, or alone) and save this rank's parameters to out/rank{r}.safetensors."""
    cfg = config.load(**kw)
    with distributed.from_env() as comm:
        run = train.build(cfg)
        run.model.double()
        opt = torch.optim.Adam(run.model.parameters(), lr=cfg.trainer.meta_lr)
        s = cfg.trainer
        for b in range(s.n_batches):
            offset, mine = comm.share(s.batch)
            task = cfg.family.sample(train_seeds(s.seed, b * s.batch + offset, mine), dtype=torch.float64)
            assert train_batch(run.model, opt, task, s, reducer=comm)["windows"] == 1
        save_file(run.model.state_dict(), f"{out}/rank{comm.rank}.safetensors")


@pytest.mark.slow
def test_two_ranks_equal_single_process_in_float64_on_the_teleporting_method(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    float64_training(PAPER64, str(tmp_path / "one"))
    script = "import json, sys; from test_distributed import float64_training as f; f(json.loads(sys.argv[1]), sys.argv[2])"
    procs = _ranks(["-c", script, json.dumps(PAPER64), str(tmp_path / "two")], TESTS)
    for p in procs:
        _, err = p.communicate(timeout=HANG)
        assert p.returncode == 0, err[-3000:]
    one, *two = (load_file(tmp_path / d / f"rank{r}.safetensors") for d, r in (("one", 0), ("two", 0), ("two", 1)))
    assert _max_diff(*two) == 0  # the ranks hold the same bits
    diff = _max_diff(one, two[0])
    print(f"float64, 6 windows of lstm-update-tele: max |θ_2 ranks − θ_1 process| = {diff:.3g}")
    assert diff <= 1e-10


@pytest.mark.slow
def test_resume_across_rank_counts_and_ranks_stay_bit_identical(tmp_path):
    cfg = config.load(**SMALL)
    full = train.run(cfg, tmp_path / "full", progress=False)
    out = tmp_path / "resumed"
    train.run(cfg, out, progress=False, max_batches=1)  # batch 1 in one process
    script = ("import json, sys; from safetensors.torch import save_file; from metatele import config, train; "
              "run = train.run(config.load(**json.loads(sys.argv[1])), sys.argv[2], resume=True, progress=False, "
              "max_batches=1); save_file(run.model.state_dict(), f'{sys.argv[2]}/rank{run.rank}.safetensors')")
    procs = _ranks(["-c", script, json.dumps(SMALL), str(out)], tmp_path)  # batch 2 on two ranks
    for p in procs:
        _, err = p.communicate(timeout=HANG)
        assert p.returncode == 0, err[-3000:]
    ranks = [load_file(out / f"rank{r}.safetensors") for r in range(2)]
    assert _max_diff(*ranks) == 0  # the ranks never drift apart
    assert train.restore(out / checkpoints.STATE_FILE).progress.batches_done == 2
    resumed = train.run(cfg, out, resume=True, progress=False)  # batch 3 in one process again
    assert resumed.progress.batches_done == 3 and [h["trajectories"] for h in resumed.progress.history] == [14, 21]
    diff = _max_diff(full.model.state_dict(), resumed.model.state_dict())
    print(f"1 → 2 → 1 ranks, resumed: max |θ − θ_uninterrupted 1 process| = {diff:.3g}")
    assert diff <= TOL


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_all_ranks_after_one_save(tmp_path):
    out = tmp_path / "ck"
    procs = _ranks(["-m", "metatele", "train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG], tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE)  # both ranks are training
    procs[1].send_signal(signal.SIGTERM)  # the rank that does not write
    results = [p.communicate(timeout=HANG) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes[0] == codes[1] and codes[0] in (130, 143), results
    assert "interrupted; saved" in results[0][0] and results[1][0] == ""
    assert all("Traceback" not in err for _, err in results)
    done = train.restore(out / checkpoints.STATE_FILE).progress.batches_done
    assert 0 < done < 1000


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_makes_the_others_exit_with_a_clear_message(tmp_path, killed):
    out = tmp_path / "ck"
    procs = _ranks(["-m", "metatele", "train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG], tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE)
    procs[killed].kill()
    t0 = time.monotonic()
    survivor = procs[1 - killed]
    _, err = survivor.communicate(timeout=HANG)  # a closed socket is seen at once; the 300 s timeout guards hangs
    print(f"rank {1 - killed} exited {time.monotonic() - t0:.2f} s after rank {killed} was killed")
    procs[killed].wait()
    assert survivor.returncode == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("metatele: error:")]
    assert len(lines) == 1 and f"rank {1 - killed} of 2: lost contact" in lines[0] and "--resume" in lines[0]
    train.restore(out / checkpoints.STATE_FILE)  # what was saved is intact


@pytest.mark.slow
def test_torchrun_with_more_ranks_than_the_batch_every_rank_exits_2_with_the_message(tmp_path):
    """Every rank refuses with the same line and exit 2; none is killed by torchrun's SIGTERM (exit -15) when
    the first one exits (torchrun itself then reports the failed children and exits 1)."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                        "-m", "metatele", "train", "--out", "o", "--no-progress", "--set", "trajectories=4",
                        "--set", "batch=2", "--set", "steps=10", "--set", "hidden=8"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=HANG,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("metatele: error:")]
    assert len(lines) == 3 and all("3 ranks need at least one trajectory each" in ln for ln in lines), r.stderr
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", r.stderr)
    assert codes and set(codes) == {"2"}, r.stderr  # every rank's own exit, none killed
    assert not (tmp_path / "o").exists()


def test_unreachable_master_is_one_line_within_the_timeout(tmp_path):
    """RANK/WORLD_SIZE set, nobody listening at MASTER_ADDR:MASTER_PORT: one line naming the address, exit 2
    (no c10d socket messages)."""
    port = _free_port()
    env = {**_rank_env(1, 2, port), TIMEOUT_ENV: "2"}
    r = subprocess.run([sys.executable, "-m", "metatele", "train", "--out", "o", "--no-progress", "--set",
                        "trajectories=4", "--set", "batch=4"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=HANG, env=env)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()] and f"no master at 127.0.0.1:{port} after 2 s" in r.stderr
