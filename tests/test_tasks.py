from __future__ import annotations

import torch

from metatele import tasks


def test_sample_shapes_and_determinism():
    b = tasks.sample([3, 4, 5])
    assert b.X.shape == (3, 20, 20) and b.Y.shape == (3, 20, 20)
    assert [w.shape for w in b.weights] == [(3, 20, 20), (3, 20, 20)]
    assert b.X.dtype == torch.float32
    again = tasks.sample([4])
    assert torch.equal(again.X[0], b.X[1]) and torch.equal(again.weights[1][0], b.weights[1][1])
    assert not torch.equal(b.X[0], b.X[1])
    assert float(b.X.min()) >= 0 and float(b.X.max()) < 1


def test_float64_is_rounded_to_float32():
    b32, b64 = tasks.sample([7]), tasks.sample([7], dtype=torch.float64)
    assert torch.equal(b64.X.float(), b32.X)


def test_general_widths_and_loss():
    b = tasks.sample([1, 2], widths=(5, 7, 6, 3), n=4, dtype=torch.float64)
    assert [w.shape for w in b.weights] == [(2, 7, 5), (2, 6, 7), (2, 3, 6)]
    L = b.loss(b.weights, b.data(0))
    assert L.shape == (2,)
    # the loss is the plain sum ½‖Y − f(X)‖² computed task by task
    for i in range(2):
        h = b.X[i]
        for W in b.weights[:-1]:
            h = torch.where(W[i] @ h > 0, W[i] @ h, 0.1 * (W[i] @ h))
        ref = 0.5 * ((b.Y[i] - b.weights[-1][i] @ h) ** 2).sum()
        assert torch.allclose(L[i], ref, rtol=1e-12)


def test_gradients_match_finite_differences():
    b = tasks.sample([11], widths=(4, 5, 3), n=4, dtype=torch.float64)
    _, grads = b.loss_and_grad(b.weights, b.data(0))
    h = 1e-6
    for m, W in enumerate(b.weights):
        E = torch.zeros_like(W)
        E[0, 1, 2] = h
        up = [w + E if j == m else w for j, w in enumerate(b.weights)]
        dn = [w - E if j == m else w for j, w in enumerate(b.weights)]
        fd = (b.loss(up, b.data(0)) - b.loss(dn, b.data(0))) / (2 * h)
        assert torch.allclose(fd, grads[m][:, 1, 2], rtol=1e-6)


def test_tile_repeats_the_tasks_in_order():
    for fam, seeds in ((tasks.RegressionFamily((5, 4, 3), 3), [1, 2]),
                       (tasks.ClassificationFamily("digits", (64, 8, 10)), [3, 4])):
        once, twice = fam.sample(seeds), fam.sample(seeds * 2)
        tiled = once.tile(2)
        assert tiled.seeds == twice.seeds
        for a, b in zip(tiled.init_weights(), twice.init_weights()):
            assert torch.equal(a, b)
        for step in (0, 7):
            got, want = tiled.data(step), twice.data(step)
            assert torch.equal(got.X, want.X) and torch.equal(got.Y, want.Y)
            assert torch.equal(tiled.teleport_data(step).batch.X, twice.teleport_data(step).batch.X)
