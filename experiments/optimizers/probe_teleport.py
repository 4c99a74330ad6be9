"""What one teleport does to the paper's 784-16-10-10 MNIST-5k network, beyond its own batch.

For a network at initialization and after 2 epochs of AdaGrad (lr 1e-2, the paper's AdaGrad teleport
point), apply single teleports (the metatele.teleport.sequential API) on 5 random training batches each and
report medians: ‖T‖ and the ‖∇L‖² gain (over the applied teleports), the largest loss drift on the teleport
batch, how many were applied (within tolerance), and the loss on the whole training split and the
validation accuracy after. Also shows why the sequential API uses the nearest
action: the plain action with g = I projects W1 onto the span of the batch.

    python experiments/optimizers/probe_teleport.py > experiments/optimizers/results/probe.md
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from metatele import datasets
from metatele.studies.common import make_mlp
from metatele.teleport.action import teleport
from metatele.nn import inspect_mlp
from metatele.teleport.sequential import ascent_teleport_, random_teleport_

torch.set_num_threads(1)
data = datasets.load("mnist5k")


@torch.no_grad()
def whole(model: torch.nn.Sequential) -> tuple[float, float]:
    out = model(data.X_val)
    return float(F.cross_entropy(model(data.X_train), data.y_train)), float((out.argmax(1) == data.y_val).double().mean())


def plain_identity_(model: torch.nn.Sequential, X: torch.Tensor, _y: torch.Tensor):
    """The plain (minimum-norm, not nearest) exact action with T = 0 (g = I), in float64."""
    s = inspect_mlp(model)
    W = [w.double() for w in s.get_weights()]
    T = [torch.zeros(1, k, k, dtype=torch.float64) for k in s.widths[1:-1]]
    s.set_weights_([w.float() for w in teleport(W, s.inputs_T(X).double(), T, None, act=s.act)])
    return None


VARIANTS = [
    ("plain action, g = I (nearest=False)", None, 16, plain_identity_),
    ("ascent, both layers, normalized steps", None, 16, lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy)),
    ("ascent, both layers, normalized steps", None, 8, lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy)),
    ("ascent, both layers, 3 normalized steps", None, 16,
     lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, steps=3)),
    ("ascent, both layers, paper lr 1e-4", None, 16, lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, lr=1e-4)),
    ("ascent, both layers, paper lr 5e-2", None, 16, lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, lr=5e-2)),
    ("random, both layers, ‖T_m‖ = 0.3", None, 16, lambda m, X, y: random_teleport_(m, X, y, F.cross_entropy, 0.3)),
    ("ascent, layer 1, normalized steps", 1, 16,
     lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, layers=1)),
    ("ascent, layer 1, normalized steps", 1, 200,
     lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, layers=1)),
    ("ascent, layer 1, paper lr 1e-4", 1, 200,
     lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, layers=1, lr=1e-4)),
    ("ascent, layer 1, paper lr 5e-2", 1, 200,
     lambda m, X, y: ascent_teleport_(m, X, y, F.cross_entropy, layers=1, lr=5e-2)),
]


def trained(epochs: int) -> torch.nn.Sequential:
    torch.manual_seed(54321)
    model = make_mlp((784, 16, 10, 10))
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(54321)
    for _ in range(epochs):
        perm = torch.randperm(4000, generator=g)
        for i in range(200):
            idx = perm[20 * i: 20 * i + 20]
            opt.zero_grad()
            F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
            opt.step()
    return model


def main() -> None:
    print("| network | teleport | samples | ‖T‖ | ‖∇L‖² gain on batch | drift on batch | applied | "
          "train loss (whole split) | validation accuracy | ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for epochs in (0, 2):
        base = trained(epochs)
        L0, A0 = whole(base)
        print(f"| AdaGrad, {epochs} epochs | none | | | | | | {L0:.3f} | {A0:.3f} | |")
        for name, layers, n, fn in VARIANTS:
            g = torch.Generator().manual_seed(7)
            rows = []
            for _ in range(5):
                model = make_mlp((784, 16, 10, 10))
                model.load_state_dict(base.state_dict())
                idx = torch.randperm(4000, generator=g)[:n]
                t0 = time.perf_counter()
                r = fn(model, data.X_train[idx], data.y_train[idx])
                ms = 1e3 * (time.perf_counter() - t0)
                rows.append((r, *whole(model), ms))
            med = lambda xs: statistics.median(xs)  # noqa: E731
            res = [r for r, *_ in rows if r is not None]
            ok = [r for r in res if r.applied]
            mag = f"{med([sum(m * m for m in r.magnitude) ** 0.5 for r in ok]):.3g}" if ok else "0"
            gain = f"{med([r.gain for r in ok]):.3g}" if ok else ""
            drift = f"{max(r.drift for r in res):.1e}" if res else ""
            applied = f"{sum(r.applied for r in res)}/5" if res else ""
            print(f"| AdaGrad, {epochs} epochs | {name} | {n} | {mag} | {gain} | {drift} | {applied} | "
                  f"{med([x[1] for x in rows]):.3f} | {med([x[2] for x in rows]):.3f} | {med([x[3] for x in rows]):.0f} |")


if __name__ == "__main__":
    main()
