# The same dump with the refactored API; then compare with the reference from the old HEAD.
import sys, torch
from pathlib import Path
from metatele import checkpoints, config, train, tasks
from metatele.evaluation import compare
from metatele.tasks.seeds import VALID_FIRST_SEED
torch.set_num_threads(2)
out = Path(sys.argv[1]); ref = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
test = tasks.sample(range(10**9, 10**9 + 64))
valid = tasks.sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + 32))
entries = compare.baselines(valid, 100) + compare.learned(checkpoints.pretrained_dir(), test.widths, "cpu")[0]
res = compare.evaluate(entries, test, 100, progress=False)
old = torch.load(ref / "traj.pt", weights_only=False)
assert [r.name for r in res] == list(old), ([r.name for r in res], list(old))
for r in res:
    L, G, hp = old[r.name]
    same = torch.equal(r.traj.loss, L) and torch.equal(r.traj.grad_norm_sq, G)
    print(f"{r.name:18s} trajectories bit-identical: {same}   (nan-aware: {torch.equal(r.traj.loss.nan_to_num(), L.nan_to_num())})")
for m in ("lstm-update", "lstm-update-tele", "lstm-lr-tele"):
    cfg = config.load(method=m, hidden=16, trajectories=24, batch=8, steps=20, unroll=10, eval_every=2, ckpt_every=1,
                      magnitude=0.1, gate=(m == "lstm-update-tele"))
    train.run(cfg, out / "ck" / m, progress=False)
    for f in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        a, ma = checkpoints.read(out / "ck" / m / f)
        b, mb = checkpoints.read(ref / "ck" / m / f)
        tens = set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        print(f"{m:18s} {f:26s} tensors bit-identical: {tens}; history identical: {ma['history'] == mb['history']}")
