"""The architecture's promises: tasks behind a protocol (a second, classification family works end to end),
methods as composable transforms with one registry, a trainer that knows only the protocols, and a
package whose own imports sit at the top of each module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from metatele import checkpoints, cli, config, step, tasks, train
from metatele.outer.trainer import train_batch
from metatele.learned import LEARNED
from metatele.methods import Composed, Proposal, add_update, baseline, chain, identity, sgd
from metatele.tasks import ClassificationFamily, Symmetry
from metatele.tasks.seeds import EVAL_FIRST_SEED, train_seeds
from metatele.teleport.action import teleport

PKG = Path(__file__).resolve().parent.parent / "metatele"
DIGITS = (64, 16, 10, 10)


# The one documented exception: `import metatele` stays light (PEP 562 __getattr__ loads load_model on first
# use) so that metatele.entry can install its Ctrl-C handler before torch is imported.
# metatele.teleport exports Teleporter the same way: it needs metatele.nn → metatele.tasks, and tasks/regression.py
# still imports teleport.action (a dependency the wrong way, issue 24), which runs metatele/teleport/__init__.py.
LAZY_IMPORT_ALLOWED = {(PKG / "__init__.py", "__getattr__"), (PKG / "teleport" / "__init__.py", "__getattr__")}


def test_own_imports_are_at_module_top_and_package_is_typed():
    offenders = []
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (f, node.name) not in LAZY_IMPORT_ALLOWED:
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("metatele"):
                        offenders.append(f"{f.name}:{inner.lineno}")
                    if isinstance(inner, ast.Import) and any(a.name.startswith("metatele") for a in inner.names):
                        offenders.append(f"{f.name}:{inner.lineno}")
    assert not offenders, offenders
    assert (PKG / "py.typed").exists()


def test_chain_identity_and_single():
    t = sgd(0.1)
    assert chain(t) is t and isinstance(chain(), identity)
    w = [torch.ones(2, 3, 3)]
    g = [torch.full((2, 3, 3), 2.0)]
    both = chain(sgd(0.1), sgd(0.5))
    prop, _ = both.propose(Proposal(), g, both.init(w), weights=w)
    torch.testing.assert_close(prop.update[0], torch.full((2, 3, 3), 1.2))  # rules add up
    assert add_update(Proposal(), g).update is g


def test_one_registry_feeds_the_cli(tmp_path, capsys):
    assert cli.main(["train", "--method", "bogus", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'bogus'" in err and all(name in err for name in LEARNED) and "--plugin MODULE" in err
    assert err.rstrip().endswith("(--method)")
    assert not (tmp_path / "o").exists()


class LearnedStepSize(nn.Module):
    """A method that is not a MetaOptimizer: GD whose log step size is a meta-parameter."""

    name = "learned-step-size"

    def __init__(self) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(-10.0))

    def init_state(self, weights):
        return None

    def propose(self, weights, grads, state):
        return Proposal(update=[self.log_lr.exp() * g for g in grads]), state


def test_trainer_meta_trains_any_method_with_parameters():
    cfg = config.load(method="lstm-update", steps=20, unroll=10, meta_loss="log")
    method = LearnedStepSize()
    opt = torch.optim.Adam(method.parameters(), lr=0.1)
    held = tasks.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 8))
    before = step.rollout(method, held, 20).loss[-1].log10().mean()
    for b in range(5):
        train_batch(method, opt, tasks.sample(train_seeds(0, 8 * b, 8)), cfg.trainer)
    after = step.rollout(method, held, 20).loss[-1].log10().mean()
    assert method.log_lr.item() > -9.8 and after < before - 0.1, (method.log_lr.item(), before, after)


def test_classification_family_batches_and_determinism():
    fam = ClassificationFamily("digits", DIGITS, batch_size=20)
    a, b = fam.sample([5, 6]), fam.sample([6])
    d0, d1 = a.data(0), a.data(1)
    assert d0.X.shape == (2, 64, 20) and d0.Y.shape == (2, 20) and d0.Y.dtype == torch.int64
    assert torch.equal(a.weights[1][1], b.weights[1][0]) and torch.equal(a.data(3).X[1], b.data(3).X[0])
    assert not torch.equal(d0.X, d1.X)
    n = a.order.shape[1]
    pos = (100 * 20 + torch.arange(20)) % n  # step 100 is past the first epoch: positions wrap around
    assert torch.equal(a.data(100).Y, a.labels[a.order[:, pos]])
    assert fam.teleport_batch == 8 and a.symmetry is Symmetry.GL
    L = a.loss(a.init_weights(), d0)
    assert L.shape == (2,) and torch.isfinite(L).all() and 1.5 < float(L.mean()) < 3.5  # ≈ log 10 at init


def test_exact_teleport_keeps_cross_entropy_on_the_teleport_batch():
    fam = ClassificationFamily("digits", DIGITS, batch_size=20)
    t = fam.sample(range(4), dtype=torch.float64)
    data = t.teleport_data(7)
    W = t.init_weights()
    T = [torch.randn(4, k, k, dtype=torch.float64) for k in DIGITS[1:-1]]
    W2 = teleport(W, data.batch.X, T, 0.5, act=t.activation)
    before, after = t.loss(W, data.batch), t.loss(W2, data.batch)
    assert ((after - before).abs() / before).max() < 1e-10
    assert (W2[0] - W[0]).abs().max() > 1e-3


def test_gd_and_teleport_baselines_train_on_classification():
    t = ClassificationFamily("digits", DIGITS, batch_size=20).sample(range(8))
    for m in (baseline("gd", lr=0.3), baseline("gd-teleport", lr=0.3, every=5, until=1)):
        traj = step.rollout(m, t, 150)
        assert torch.isfinite(traj.loss).all()
        assert traj.loss[-20:].mean() < 0.5 * traj.loss[0].mean(), m.name


def test_learned_method_meta_trains_on_classification_and_eval_uses_its_family(tmp_path, capsys):
    cfg = config.load(method="lstm-update-tele", task="classification", dataset="digits", widths=list(DIGITS),
                      hidden=8, trajectories=8, batch=4, steps=10, unroll=5, eval_every=1, eval_tasks=4,
                      magnitude=0.1)
    run = train.run(cfg, tmp_path / "ck", progress=False)
    assert run.progress.batches_done == 2 and run.progress.skipped_windows == 0
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    model = checkpoints.load_model(tmp_path / "ck")
    assert model.metadata["family"]["name"] == "classification"
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "ck"), "--tasks", "3", "--steps", "4", "--no-progress",
                     "--out", str(tmp_path / "out"), "--logdir", str(tmp_path / "runs")])
    assert code == 0 and "| lstm-update-tele |" in capsys.readouterr().out


def test_teleport_ablation_is_a_recomposition():
    cfg = config.load(method="lstm-update-tele", hidden=8, widths=[6, 6, 6], n=6, magnitude=0.1)
    model = train.build(cfg).model
    off = model.without_teleport()
    task = tasks.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 3), widths=(6, 6, 6), n=6)
    w = task.init_weights()
    _, g = task.loss_and_grad(w, task.data(0))
    p_on, _ = model.propose(w, g, model.init_state(w))
    p_off, _ = off.propose(w, g, off.init_state(w))
    assert p_off.teleport is None and p_on.teleport is not None
    torch.testing.assert_close(p_on.update[0], p_off.update[0], rtol=0, atol=0)
    assert isinstance(off, Composed)


def test_classification_family_refuses_inexact_teleport_batch():
    with pytest.raises(ValueError, match="teleport_batch"):
        ClassificationFamily("digits", DIGITS, batch_size=20, teleport_batch=17)


def _definitions(predicate) -> list[str]:
    """Where in the package an AST node satisfies `predicate` (as "path:line", relative to metatele/)."""
    return [f"{f.relative_to(PKG)}:{node.lineno}" for f in sorted(PKG.rglob("*.py"))
            for node in ast.walk(ast.parse(f.read_text())) if predicate(node)]


def test_one_evaluate_one_tensorboard_writer_one_seed_policy():
    """Issue 24: one `evaluate` (evaluation/compare.py), one TensorBoard writer for reports
    (reporting/tensorboard.py; the training log has its own), the studies' seed stride only in tasks/seeds.py."""
    evaluates = _definitions(lambda n: isinstance(n, ast.FunctionDef) and n.name == "evaluate")
    assert [e.split(":")[0] for e in evaluates] == ["evaluation/compare.py"], evaluates
    writers = _definitions(lambda n: isinstance(n, ast.ImportFrom) and n.module == "torch.utils.tensorboard")
    assert {w.split(":")[0] for w in writers} - {"learned/log.py", "outer/log.py"} == {"reporting/tensorboard.py"}
    strides = _definitions(lambda n: isinstance(n, ast.Constant) and n.value == 54321)
    assert [s.split(":")[0] for s in strides] == ["tasks/seeds.py"], strides

