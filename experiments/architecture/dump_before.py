# Reference dump at the pre-refactor HEAD: full loss trajectories of every compare method, and tiny trained checkpoints.
import sys, torch
from pathlib import Path
from metatele import checkpoints, evaluate, tasks, config, train
torch.set_num_threads(2)
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
test = tasks.sample(range(10**9, 10**9 + 64))
valid = tasks.sample(range(tasks.VALID_FIRST_SEED, tasks.VALID_FIRST_SEED + 32))
methods = evaluate.methods_for(checkpoints.pretrained_dir(), valid, 100, "cpu")
res = evaluate.evaluate(methods, test, 100, progress=False)
torch.save({r.name: (r.traj.loss, r.traj.grad_norm_sq, r.hparams) for r in res}, out / "traj.pt")
for m in ("lstm-update", "lstm-update-tele", "lstm-lr-tele"):
    cfg = config.load(method=m, hidden=16, trajectories=24, batch=8, steps=20, unroll=10, eval_every=2, ckpt_every=1,
                      eps=0.1, gate=(m == "lstm-update-tele"))
    train.train(cfg, out / "ck" / m, progress=False)
print("ok")
