"""Size-agnostic learned methods: one set of meta-parameters runs on any shape, and the bilinear teleport net is
permutation-equivariant. (Their meta-gradients are checked against finite differences in test_meta.py.)"""
from __future__ import annotations

import pytest
import torch

from metatele import config, step, train
from metatele.learned.coordinatewise import BilinearTeleNet
from metatele.tasks import LAWS, ClassificationFamily, RegressionFamily
from metatele.tasks.seeds import EVAL_FIRST_SEED

SHAPES = [(20, 20, 20), (10, 10, 10), (20, 32, 32, 20), (30, 60, 10)]


@pytest.mark.parametrize("method", ["any-update", "any-update-tele", "any-update-tele-bilinear"])
def test_one_optimizer_many_shapes_and_a_shape_free_parameter_count(method):
    """One untrained set of meta-parameters (its update starts at a nominal step relative to each tensor's
    scale) optimizes every shape: after 5 steps each task's loss is below 0.9× its start."""
    counts = set()
    for widths in SHAPES[:3]:
        cfg = config.load(method=method, hidden=8, widths=list(widths), n=min(10, min(widths[:-2])), magnitude=0.05)
        counts.add(sum(p.numel() for p in train.build(cfg).model.parameters()))
    assert len(counts) == 1  # the spec carries no widths for these methods
    model = train.build(config.load(method=method, hidden=8, magnitude=0.05)).model
    for widths in SHAPES:
        task = RegressionFamily(widths, min(10, min(widths[:-2])), LAWS["normal-init"]).sample(
            range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 3))
        traj = step.rollout(model, task, 5)
        assert traj.loss.shape == (6, 3)
        assert (traj.loss[5] < 0.9 * traj.loss[0]).all(), (widths, traj.loss[5] / traj.loss[0])  # it optimizes
    digits = ClassificationFamily("digits", (64, 16, 10, 10)).sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 2))
    assert torch.isfinite(step.rollout(model, digits, 3).loss).all()


def test_bilinear_teleport_net_is_permutation_equivariant():
    torch.manual_seed(0)
    net = BilinearTeleNet(16).double()
    B, d_in, k, d_out = 3, 7, 5, 4
    W_in, G_in = torch.randn(B, k, d_in, dtype=torch.float64), torch.randn(B, k, d_in, dtype=torch.float64)
    W_out, G_out = torch.randn(B, d_out, k, dtype=torch.float64), torch.randn(B, d_out, k, dtype=torch.float64)
    coef = torch.randn(B, 2, dtype=torch.float64)
    P = torch.eye(k, dtype=torch.float64)[torch.randperm(k)]
    T = net(W_in, W_out, G_in, G_out, coef)
    Tp = net(P @ W_in, W_out @ P.T, P @ G_in, G_out @ P.T, coef)
    torch.testing.assert_close(Tp, P @ T @ P.T, rtol=1e-12, atol=1e-12)
    assert T.abs().max() > 1e-3
