"""The one adapter between a user's torch model and metatele: reading and writing its weights, the task protocol,
and teleporting parts of it.

- `SequentialTask.of(model, X, y, loss=...)`: an `nn.Sequential` MLP (Linear, (LeakyReLU, Linear)*; all with
  biases or none) as a `metatele.tasks.TaskBatch` with B = 1, for the shared inner step (`metatele.step`); weights
  (1, d_out, d_in) per Linear, augmented [W b] (1, d_out, d_in + 1) with biases. `write_` puts weights back.
- Chains, for any model: `find_chains(model)` lists every Linear, (LeakyReLU, Linear)+ run inside the model's
  `nn.Sequential`s (a `Chain`: its Linear layers' names, the activation, whether it has biases);
  `chain_of(model, names, negative_slope)` describes one the user names (their forward must apply that
  LeakyReLU between them); `inspect_mlp(model)` requires the whole model to be one chain.
- `teleport_chain_(chain, X, T)`: the nearest exact action g_m = I + T_m on the chain's input batch X (n, d0),
  in place, with its documented fallback (exact on a sub-batch) and check; returns a `TeleportResult`.
  A torch.optim optimizer that teleports captures each chain's input X (a forward hook on chain.linears[0]) and
  calls it with its own T.
- `check_inputs(chain, X, y)`: the Python API's checks of X, y and the weights, before any work (ValueError).
"""
from __future__ import annotations

from metatele.nn.chains import ArchitectureError, Chain, chain_of, find_chains, inspect_mlp, to_sequential
from metatele.nn.task import LOSSES, SequentialTask, check_inputs
from metatele.nn.teleport import (DEFAULT_RTOL, MAX_HALVINGS, TeleportResult, TeleportWarning, exact_rows,
                                  full_rank_rows, teleport_chain_)

__all__ = ["ArchitectureError", "Chain", "chain_of", "find_chains", "inspect_mlp", "to_sequential", "LOSSES",
           "SequentialTask", "check_inputs", "DEFAULT_RTOL", "MAX_HALVINGS", "TeleportResult", "TeleportWarning",
           "exact_rows", "full_rank_rows", "teleport_chain_"]
