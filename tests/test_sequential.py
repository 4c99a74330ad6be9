"""The exact action on a user's nn.Sequential keeps its outputs on the teleport batch, with and without biases."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from metatele.errors import ConfigError
from metatele.teleport.sequential import inspect_mlp, teleport_


def mlp(bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 6, bias=bias), nn.LeakyReLU(0.1), nn.Linear(6, 5, bias=bias), nn.LeakyReLU(0.1),
                         nn.Linear(5, 3, bias=bias)).double()


@pytest.mark.parametrize("bias", [True, False])
def test_exact_action_keeps_outputs_in_float64(bias):
    m = mlp(bias)
    X = torch.randn(inspect_mlp(m).max_batch(), 8, dtype=torch.float64)
    before = [p.clone() for p in m.parameters()]
    y0 = m(X).detach()
    teleport_(m, X, [torch.randn(6, 6, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)], 0.5)
    assert float((m(X) - y0).abs().max() / y0.abs().max()) <= 1e-10
    assert max(float((p - q).abs().max()) for p, q in zip(m.parameters(), before)) > 1e-2


def test_refuses_what_it_cannot_teleport():
    with pytest.raises(ConfigError, match="LeakyReLU"):
        inspect_mlp(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    m = mlp(True)
    with pytest.raises(ConfigError, match="too large"):
        teleport_(m, torch.randn(8, 8, dtype=torch.float64), [torch.zeros(6, 6), torch.zeros(5, 5)], 0.1)
