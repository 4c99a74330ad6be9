"""A conformance kit for task families: `check_family(family)` checks what the rest of metatele relies on.

- shapes: B tasks per batch; weights[m] (B, d_{m+1}, d_m) matching `TaskBatch.widths` (and the family's widths,
  if it has one shape); data X (B, d0, n); losses (B,) finite; gradients shaped like the weights;
- determinism in the seeds: sampling the same seeds twice gives the same tasks, and a task does not depend on
  the other seeds of its batch (within the batch's member, `TaskFamily.member`);
- gradients: `loss_and_grad` agrees with central finite differences (in float64);
- symmetry: the claimed `Symmetry` keeps the loss: GL teleports keep it on the teleport data, positive diagonal
  rescaling keeps it on the step's data (GL and RESCALE); and the family's symmetry is its tasks' symmetry;
- registration: `to_dict()` names a registered family and `family_from_dict` rebuilds an equal description.

Each failure raises `ConformanceError` naming the property. Use it in your tests:

    from metatele.testing import check_family
    check_family(MyFamily(...))
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from metatele.tasks.base import Symmetry, TaskBatch, TaskFamily
from metatele.tasks.registry import family_from_dict
from metatele.teleport.action import rescale, teleport

__all__ = ["ConformanceError", "check_family"]


class ConformanceError(AssertionError):
    """A task family breaks a property of the task protocol."""


def _require(ok: bool, family: TaskFamily, what: str) -> None:
    if not ok:
        raise ConformanceError(f"task family {family.to_dict().get('name')!r}: {what}")


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def _row(ts: Sequence[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [t[i:i + 1] for t in ts]


def check_family(family: TaskFamily, seeds: Sequence[int] = (11, 12, 13), *, steps: Sequence[int] = (0, 1),
                 fd_coords: int = 4, fd_eps: float = 1e-6, rtol: float = 1e-5, teleport_magnitude: float = 0.1,
                 generator_seed: int = 0) -> None:
    """Raise ConformanceError unless `family` has every property in the module docstring, checked on the tasks
    of `seeds` (at least 2) at inner steps `steps`, in float64; fd_coords random coordinates per weight tensor
    are compared with central differences of step fd_eps (relative tolerance rtol)."""
    seeds = [int(s) for s in seeds]
    _require(len(seeds) >= 2, family, "check_family needs at least 2 seeds")
    gen = torch.Generator().manual_seed(generator_seed)
    task = family.sample(seeds, dtype=torch.float64)
    _check_shapes(family, task, len(seeds), steps)
    _check_determinism(family, task, seeds, steps)
    for step in steps:
        _check_gradients(family, task, step, gen, fd_coords, fd_eps, rtol)
        _check_symmetry(family, task, step, gen, teleport_magnitude)
    d = family.to_dict()
    _require(family_from_dict(d).to_dict() == d, family, "family_from_dict(to_dict()) does not rebuild it")


def _check_shapes(family: TaskFamily, task: TaskBatch, B: int, steps: Sequence[int]) -> None:
    widths = task.widths
    _require(not family.widths or tuple(family.widths) == tuple(widths), family,
             f"its widths {family.widths} differ from its tasks' {widths}")
    W = task.init_weights()
    _require(len(W) == len(widths) - 1 and all(w.shape == (B, b, a) for w, a, b in zip(W, widths[:-1], widths[1:])),
             family, f"init_weights shapes {[tuple(w.shape) for w in W]} do not match B={B} and widths {widths}")
    _require(all(w.dtype == torch.float64 for w in W), family, "sample(dtype=float64) gave weights of another dtype")
    _require(task.symmetry is family.symmetry, family,
             f"its symmetry {family.symmetry} differs from its tasks' {task.symmetry}")
    for step in steps:
        data = task.data(step)
        _require(data.X.shape[:2] == (B, widths[0]), family, f"data({step}).X has shape {tuple(data.X.shape)}, "
                 f"expected (B={B}, d0={widths[0]}, n)")
        loss, grads = task.loss_and_grad(W, data)
        _require(loss.shape == (B,) and bool(torch.isfinite(loss).all()), family,
                 f"loss at step {step} is not B={B} finite values: {loss}")
        _require(all(g.shape == w.shape for g, w in zip(grads, W)), family, "gradients are not shaped like weights")


def _check_determinism(family: TaskFamily, task: TaskBatch, seeds: list[int], steps: Sequence[int]) -> None:
    again = family.sample(seeds, dtype=torch.float64)
    _require(_same(task.init_weights(), again.init_weights()), family, "the same seeds gave different weights")
    member = family.member(seeds[0])
    _require(_same(task.init_weights(), member.sample(seeds, dtype=torch.float64).init_weights()), family,
             "member(seeds[0]).sample(seeds) differs from sample(seeds)")
    alone = member.sample(seeds[1:2], dtype=torch.float64)  # the second task, without the others of its batch
    _require(_same(_row(task.init_weights(), 1), alone.init_weights()), family,
             "a task's weights depend on the other seeds of its batch")
    for step in steps:
        a, b, c = task.data(step), again.data(step), alone.data(step)
        _require(torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y), family, f"the same seeds gave different data({step})")
        _require(torch.equal(a.X[1:2], c.X) and torch.equal(a.Y[1:2], c.Y), family,
                 f"a task's data({step}) depends on the other seeds of its batch")


def _check_gradients(family: TaskFamily, task: TaskBatch, step: int, gen: torch.Generator, coords: int, eps: float,
                     rtol: float) -> None:
    W, data = task.init_weights(), task.data(step)
    _, grads = task.loss_and_grad(W, data)
    for m, w in enumerate(W):
        flat = torch.randint(0, w[0].numel(), (coords,), generator=gen)
        for j in flat.tolist():
            idx = (slice(None), *divmod(j, w.shape[2]))
            plus, minus = [x.clone() for x in W], [x.clone() for x in W]
            plus[m][idx] += eps
            minus[m][idx] -= eps
            fd = (task.loss(plus, data) - task.loss(minus, data)) / (2 * eps)
            g = grads[m][idx]
            _require(bool(torch.allclose(g, fd, rtol=rtol, atol=rtol * float(grads[m].abs().max()))), family,
                     f"d loss / d W_{m}{list(divmod(j, w.shape[2]))} at step {step}: autograd {g.tolist()} vs finite "
                     f"differences {fd.tolist()}")


def _check_symmetry(family: TaskFamily, task: TaskBatch, step: int, gen: torch.Generator, magnitude: float) -> None:
    W = task.init_weights()
    B = W[0].shape[0]
    if task.symmetry is Symmetry.NONE:
        return
    data = task.data(step)
    s = [0.3 * torch.randn(B, w.shape[1], generator=gen, dtype=w.dtype) for w in W[:-1]]
    before, after = task.loss(W, data), task.loss(rescale(W, s), data)
    _require(bool(torch.allclose(before, after, rtol=1e-9, atol=0.0)), family,
             f"positive diagonal rescaling changed the loss at step {step}: {before.tolist()} → {after.tolist()}")
    if task.symmetry is Symmetry.GL:
        tdata = task.teleport_data(step)
        T = [torch.randn(B, w.shape[1], w.shape[1], generator=gen, dtype=w.dtype) for w in W[:-1]]
        moved = teleport(W, tdata.batch.X, T, magnitude, act=task.activation, X_pinv=tdata.X_pinv, nearest=True)
        before, after = task.loss(W, tdata.batch), task.loss(moved, tdata.batch)
        _require(bool(torch.allclose(before, after, rtol=1e-7, atol=0.0)), family,
                 f"a GL teleport changed the loss on the teleport data of step {step}: {before.tolist()} → "
                 f"{after.tolist()}")
        _require(not _same(moved, W), family, "a GL teleport left the weights unchanged")
